"""The core layer: what every other layer speaks. The wire protocol (`protocol`), the model package and its card
(`package`, `archives`), the task heads and their typed results (`tasks`, `results`, `tracking`, `contours`) and the
error types (`errors`). It imports nothing of edgert's above it: only `calibration.preprocessing`, the one image
pipeline shared with conversion.
"""
