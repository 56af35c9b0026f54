"""The inference layer: a model package run on frames (`pipeline`: preprocessing, a backend's runner, the task's
decoder), shared by the daemon, `edgert bench`, `replay` and the demo. Above the core layer and the backends.
"""
