"""The converters' option enums in one light module: the CLI takes its choices from them (`edgert --help` imports
no onnx), and the modules that act on them re-export them where they always were."""

from __future__ import annotations

import enum

DEFAULT_OPSET = 17  # the opset `prepare` converts models to (>= 13)


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class PruneMethod(str, enum.Enum):
    CHANNELS = "channels"  # structured: whole channels out, consumers refitted
    SPARSE_2_4 = "2:4"  # semi-structured: two of every four input-channel weights zero (TensorRT sparse kernels)
    CHANNELS_2_4 = "channels+2:4"  # channels first, then 2:4 on what is left

    @property
    def channels(self) -> bool:
        return self is not PruneMethod.SPARSE_2_4

    @property
    def sparse(self) -> bool:
        return self is not PruneMethod.CHANNELS


class Budget(str, enum.Enum):
    """What `PruneOptions.ratio` is a fraction of."""

    LATENCY = "latency"  # the weighted ops' time on ONNX Runtime's CPU provider, modelled: FLOPs in channel blocks
    FLOPS = "flops"  # their multiply-accumulates


class Saliency(str, enum.Enum):
    MAGNITUDE = "magnitude"  # the two smallest |w| of each group go; no data, no compensation
    OBS = "obs"  # optimal brain surgeon on calibration inputs, with least-squares compensation


class QuantTarget(str, enum.Enum):
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"


class HardwareCompat(str, enum.Enum):
    NONE = "none"
    AMPERE_PLUS = "ampere+"  # TensorRT 8.6+: one engine for Ampere and newer dGPUs
    SAME_COMPUTE_CAPABILITY = "same-compute-capability"  # TensorRT 10.x: any GPU of the same compute capability


class Int8Path(str, enum.Enum):
    AUTO = "auto"  # explicit (the package's Q/DQ graph), implicit only where the DLA needs it
    EXPLICIT = "explicit"
    IMPLICIT = "implicit"  # the FP32 graph plus the package's calibration.cache (TensorRT 8.x / 10.x only)


class Sparse(str, enum.Enum):
    AUTO = "auto"  # on when the package's card lists layers the pruner made 2:4
    ON = "on"
    OFF = "off"


class Builder(str, enum.Enum):
    AUTO = "auto"  # the Python bindings, else trtexec
    PYTHON = "tensorrt-python"
    TRTEXEC = "trtexec"


NUMERIC = "numeric"  # the name of "no task" on the command line and in reports: outputs compared as numbers
