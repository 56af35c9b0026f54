"""A model on a Triton Inference Server as a runner: the daemon keeps ingest, preprocessing, the task head and
publishing; only the tensor goes to Triton and back (KServe v2 over gRPC, or HTTP).

`activate` waits for the server's model to be ready, then checks Triton's metadata against the package's ONNX
(input and output names, datatypes and shapes) and refuses a mismatch with one line naming it. `infer` sends one
request with a per-request timeout; a failure (the server down, slow or refusing) is a BackendError for that frame,
and the runner remembers it: `unavailable()` says why until a request succeeds again, which is how the daemon turns
a lost server into DEGRADED (edge_runtime/daemon/health.py) while ingest goes on. gRPC reconnects on its own: each
frame after a failure is a new attempt, so the daemon recovers with the first frame the server answers.

On the same host the tensors can go through Triton's system shared memory (POSIX shm regions registered with the
server) instead of the request body; elsewhere they go in the request. CURVE does not apply to this channel:
gRPC over TLS does (`tls`, with the server's CA and, for mutual TLS, this client's key and certificate).

`tritonclient` is an optional extra (`pip install 'edgert[triton]'`), imported when the runner is activated.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import BackendError, Runner
from edge_runtime.core.errors import OptionError, escaped

log = logging.getLogger("edgert.triton")
INSTALL_HINT = "the triton backend needs tritonclient: pip install 'edgert[triton]'"

# KServe v2 datatypes for the numpy types a card's I/O can have
DATATYPES: dict[np.dtype[Any], str] = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.bool_): "BOOL",
}
NUMPY_TYPES = {name: dtype for dtype, name in DATATYPES.items()}  # the same table, read the other way


class TritonProtocol(str, enum.Enum):
    GRPC = "grpc"  # port 8001 by default: HTTP/2, one channel, reconnects on its own
    HTTP = "http"  # port 8000


class SharedMemory(str, enum.Enum):
    AUTO = "auto"  # on for a server on this host (a loopback address), off otherwise
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class TritonOptions:
    """Where the model runs and how the daemon talks to it ([triton] in the daemon's config)."""

    url: str = "127.0.0.1:8001"  # host:port of Triton's gRPC (or HTTP) endpoint
    model: str = ""  # the model's name on the server; "" = the card's name
    model_version: str = ""  # "" = the server's choice (its version policy)
    protocol: TritonProtocol = TritonProtocol.GRPC
    timeout_ms: int = 1000  # one request, connection included: a slower answer fails that frame
    ready_timeout_s: float = 30.0  # at start: how long to wait for the server's model to be ready
    shared_memory: SharedMemory = SharedMemory.AUTO
    tls: bool = False  # gRPC over TLS (the server started with --grpc-use-ssl)
    root_certificates: Path | None = None  # the CA that signed the server's certificate (PEM); None: the system's
    private_key: Path | None = None  # mutual TLS: this client's key (PEM)
    certificate_chain: Path | None = None  # mutual TLS: this client's certificate (PEM)

    def __post_init__(self) -> None:
        host, _, port = self.url.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in self.url:
            raise OptionError(f"triton.url must be host:port (as 127.0.0.1:8001), not {escaped(self.url)}")
        if not 1 <= self.timeout_ms <= 60_000:
            raise OptionError(f"triton.timeout_ms must be 1..60000, not {self.timeout_ms}")
        if not (math.isfinite(self.ready_timeout_s) and 0 <= self.ready_timeout_s <= 3600):
            raise OptionError(f"triton.ready_timeout_s must be 0..3600, not {self.ready_timeout_s}")
        if self.tls and self.protocol is not TritonProtocol.GRPC:
            raise OptionError("triton.tls is for gRPC; for HTTPS put Triton behind a TLS proxy")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise OptionError("triton.private_key and triton.certificate_chain go together (mutual TLS)")
        if not self.tls and (self.root_certificates or self.private_key):
            raise OptionError("triton certificates are given but triton.tls is off")

    @property
    def host(self) -> str:
        return self.url.rpartition(":")[0].strip("[]")

    @property
    def local(self) -> bool:
        """Whether the server is on this host (a loopback address or localhost)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def use_shared_memory(self) -> bool:
        return self.local if self.shared_memory is SharedMemory.AUTO else self.shared_memory is SharedMemory.ON


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2: FP32, INT64, ...
    shape: tuple[int, ...]  # -1 where the size is free

    def fits(self, other: TensorSpec) -> bool:
        same_rank = len(self.shape) == len(other.shape)
        dims = all(a == b or a < 0 or b < 0 for a, b in zip(self.shape, other.shape))
        return self.name == other.name and self.datatype == other.datatype and same_rank and dims

    def __str__(self) -> str:
        return f"'{self.name}' {self.datatype} {list(self.shape)}"


def onnx_io(onnx_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs (initializers excluded) and outputs, as Triton would describe them."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        t = v.type.tensor_type
        try:
            datatype = DATATYPES.get(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
        except KeyError:  # an undefined or unknown element type
            datatype = None
        if datatype is None:
            raise BackendError(f"{onnx_path}: tensor '{v.name}' has a type Triton's client cannot carry here")
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return TensorSpec(v.name, datatype, shape)

    return [spec(v) for v in model.graph.input if v.name not in weights], [spec(v) for v in model.graph.output]


class TritonRunner(Runner):
    def __init__(self, model_path: str | Path, model_name: str, options: TritonOptions = TritonOptions()) -> None:
        self.options = options
        self.model = options.model or model_name
        super().__init__(f"triton[{self.model}@{options.url}]")
        self.model_path = Path(model_path)
        self._client: Any = None
        self._module: Any = None  # tritonclient.grpc or tritonclient.http
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._regions: list[tuple[str, Any, int]] = []  # name, shm handle, bytes: inputs, then outputs
        self._unavailable: str | None = None
        self.failures = 0  # requests that failed since activate

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _activate(self) -> None:
        opts = self.options
        try:
            if opts.protocol is TritonProtocol.GRPC:
                import tritonclient.grpc as module
            else:
                import tritonclient.http as module
        except (ImportError, RuntimeError):  # RuntimeError: tritonclient installed without its http extra
            raise BackendError(INSTALL_HINT) from None
        self._module = module
        self._client = self._connect(module)
        self._inputs, self._outputs = onnx_io(self.model_path)
        self._wait_ready()
        self._check_metadata()
        if opts.use_shared_memory:
            self._register_shared_memory()

    def _connect(self, module: Any) -> Any:
        opts = self.options
        if opts.protocol is TritonProtocol.HTTP:
            timeout = opts.timeout_ms / 1000.0
            return module.InferenceServerClient(opts.url, connection_timeout=timeout, network_timeout=timeout)

        def readable(path: Path | None) -> str | None:  # tritonclient opens the files itself: check them first
            if path is None:
                return None
            try:
                with path.open("rb"):
                    return str(path)
            except OSError as exc:
                raise BackendError(f"{self.name}: cannot read {path}: {exc.strerror}") from None

        if not opts.tls:
            return module.InferenceServerClient(opts.url)
        return module.InferenceServerClient(
            opts.url, ssl=True, root_certificates=readable(opts.root_certificates),
            private_key=readable(opts.private_key), certificate_chain=readable(opts.certificate_chain),
        )  # fmt: skip

    def _wait_ready(self) -> None:
        """Readiness is the server's model-ready, not a connection: a loading model is waited for."""
        deadline = time.monotonic() + self.options.ready_timeout_s
        last = "no answer"
        while True:
            try:
                if self._client.is_model_ready(self.model, self.options.model_version):
                    return
                last = "the server answers, the model is not ready"
            except Exception as exc:  # tritonclient's InferenceServerException, or a connection error under it
                last = _reason(exc)
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"{self.name}: model '{self.model}' not ready within {self.options.ready_timeout_s:g} s ({last})"
                )
            time.sleep(0.25)

    def _check_metadata(self) -> None:
        try:
            if self.options.protocol is TritonProtocol.GRPC:  # protobuf unless asked for JSON; HTTP always JSON
                meta = self._client.get_model_metadata(self.model, self.options.model_version, as_json=True)
            else:
                meta = self._client.get_model_metadata(self.model, self.options.model_version)
        except Exception as exc:
            raise BackendError(f"{self.name}: cannot read the model's metadata: {_reason(exc)}") from None

        def specs(key: str) -> dict[str, TensorSpec]:
            return {
                t["name"]: TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
                for t in meta.get(key, [])
            }

        for kind, ours, theirs in (
            ("input", self._inputs, specs("inputs")),
            ("output", self._outputs, specs("outputs")),
        ):
            for want in ours:
                have = theirs.get(want.name)
                if have is None:
                    raise BackendError(
                        f"{self.name}: the server's model has no {kind} '{want.name}' (it has {sorted(theirs)}): "
                        "is it the model of this package?"
                    )
                if not want.fits(have):
                    raise BackendError(f"{self.name}: {kind} {have} on the server, {want} in the package")

    # -- shared memory ---------------------------------------------------------------------------------------------
    def _register_shared_memory(self) -> None:
        import tritonclient.utils.shared_memory as shm

        token = uuid.uuid4().hex[:12]
        try:
            self._client.unregister_system_shared_memory()  # regions of an earlier process of ours are stale
        except Exception:
            pass
        for spec in (*self._inputs, *self._outputs):
            if any(d < 0 for d in spec.shape):
                self._release_shared_memory()
                return  # a free dimension: the size is not known before the frame; the request body carries it
            size = int(np.prod(spec.shape)) * NUMPY_TYPES[spec.datatype].itemsize
            name = f"edgert_{token}_{len(self._regions)}"
            handle = shm.create_shared_memory_region(name, f"/{name}", size)
            self._regions.append((name, handle, size))
            try:
                self._client.register_system_shared_memory(name, f"/{name}", size)
            except Exception as exc:
                self._release_shared_memory()
                if self.options.shared_memory is SharedMemory.ON:
                    raise BackendError(f"{self.name}: the server refused shared memory: {_reason(exc)}") from None
                log.warning("%s: the server refused shared memory (%s): tensors go in the requests", self.name,
                            _reason(exc))  # fmt: skip
                return

    def _release_shared_memory(self) -> None:
        if not self._regions:
            return
        import tritonclient.utils.shared_memory as shm

        for name, handle, _ in self._regions:
            try:
                self._client.unregister_system_shared_memory(name)
            except Exception:  # the server may be gone: the region is ours to remove either way
                pass
            shm.destroy_shared_memory_region(handle)
        self._regions = []

    @property
    def shared_memory(self) -> bool:
        return bool(self._regions)

    def _deactivate(self) -> None:
        self._release_shared_memory()
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
        self._client = None

    # -- inference -------------------------------------------------------------------------------------------------
    def unavailable(self) -> str | None:
        return self._unavailable

    def _reregister(self) -> None:
        """After a failure the server may be a new process that knows none of our regions: register them again."""
        for name, _, size in self._regions:
            try:
                self._client.unregister_system_shared_memory(name)
            except Exception:  # not registered there: what a restarted server says
                pass
            try:
                self._client.register_system_shared_memory(name, f"/{name}", size)
            except Exception as exc:
                raise self._failed(exc) from None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        module, opts = self._module, self.options
        if self._regions and self._unavailable is not None:
            self._reregister()
        inputs, outputs = [], []
        for i, spec in enumerate(self._inputs):
            value = feed.get(spec.name)
            if value is None:
                raise BackendError(f"{self.name}: the feed has no '{spec.name}' (has {sorted(feed)})")
            value = np.ascontiguousarray(value)
            tensor = module.InferInput(spec.name, list(value.shape), DATATYPES.get(value.dtype, spec.datatype))
            if self._regions:
                import tritonclient.utils.shared_memory as shm

                name, handle, size = self._regions[i]
                if value.nbytes != size:
                    raise BackendError(f"{self.name}: '{spec.name}' is {value.nbytes} bytes, its region {size}")
                shm.set_shared_memory_region(handle, [value])
                tensor.set_shared_memory(name, size)
            else:
                tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        for j, spec in enumerate(self._outputs):
            out = module.InferRequestedOutput(spec.name)
            if self._regions:
                name, _, size = self._regions[len(self._inputs) + j]
                out.set_shared_memory(name, size)
            outputs.append(out)
        try:
            kwargs: dict[str, Any] = {"model_version": opts.model_version, "outputs": outputs}
            if opts.protocol is TritonProtocol.GRPC:
                kwargs["client_timeout"] = opts.timeout_ms / 1000.0
            response = self._client.infer(self.model, inputs, **kwargs)
        except Exception as exc:  # InferenceServerException: down, timed out, refused
            raise self._failed(exc) from None
        self._unavailable = None
        return {spec.name: self._output(response, j, spec) for j, spec in enumerate(self._outputs)}

    def _failed(self, exc: BaseException) -> BackendError:
        """A request that failed: counted, remembered for unavailable() until one succeeds, and the frame's error."""
        self.failures += 1
        self._unavailable = f"Triton at {self.options.url}: {_reason(exc)}"
        return BackendError(f"{self.name}: {_reason(exc)}")

    def _output(self, response: Any, j: int, spec: TensorSpec) -> np.ndarray:
        if not self._regions:
            value = response.as_numpy(spec.name)
            if value is None:
                raise BackendError(f"{self.name}: the server's answer has no '{spec.name}'")
            return np.asarray(value)
        import tritonclient.utils.shared_memory as shm

        _, handle, _ = self._regions[len(self._inputs) + j]
        return np.array(
            shm.get_contents_as_numpy(handle, NUMPY_TYPES[spec.datatype], list(spec.shape))
        )  # a copy: the region is reused


def _reason(exc: BaseException) -> str:
    """tritonclient's message in one bounded line (its gRPC status and text), escaped: it comes from the network."""
    text = getattr(exc, "message", None)
    status = getattr(exc, "status", None)
    said = text() if callable(text) else str(exc)
    code = status() if callable(status) else None
    line = " ".join(f"{code or ''} {said}".split())
    return escaped(line[:300] or exc.__class__.__name__)


__all__ = ["SharedMemory", "TensorSpec", "TritonOptions", "TritonProtocol", "TritonRunner", "onnx_io"]
