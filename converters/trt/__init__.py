"""TensorRT engine building's parts: `plan.py` (what to build, pure), `trtexec.py` (the command line and the
installed TensorRT), `layers.py` (the per-layer precision report); `converters.engine` builds."""
