"""Serve an edgert model package's ONNX from a real Triton Inference Server, through PyTriton.

PyTriton (`nvidia-pytriton`) bundles `tritonserver` and binds a Python function to a model name; the function here
runs the package's ONNX with ONNX Runtime on the CPU. It is what edgert's Triton tests and benchmark run against,
and a way to try `backend = "triton"` without a GPU; a production Triton serves the same ONNX with its own
onnxruntime or tensorrt backend from a model repository (docs/TRITON.md).

Run it with a Python whose standard library matches the libpython that PyTriton's stub loads (Debian's own
`/usr/bin/python3` in a venv: a separately built Python fails to load the model with
"'_thread.RLock' object has no attribute '_recursion_count'"):

    /usr/bin/python3 -m venv /opt/pytriton && /opt/pytriton/bin/pip install nvidia-pytriton onnxruntime
    /opt/pytriton/bin/python deploy/triton/serve_package.py edge_runtime/models/us_seg_demo --grpc-port 8001

It prints one line, `ready grpc=PORT http=PORT model=NAME`, once the model is ready, and serves until SIGINT or
SIGTERM. It reads model.json for the model's name and its I/O only; nothing from edgert is imported (PyTriton's
venv need not have edgert).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("package", type=Path, help="an edgert model package folder (model.json + its ONNX)")
    p.add_argument("--model-name", default=None, help="the name Triton serves it under (default: the card's name)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--address", default="127.0.0.1", help="where the server listens (default 127.0.0.1)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="add this to every inference (a slow server, for tests)")
    p.add_argument("--tls-cert", type=Path, help="gRPC over TLS: the server's certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="gRPC over TLS: the server's private key (PEM)")
    args = p.parse_args(argv)

    import onnxruntime as ort
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    card = json.loads((args.package / "model.json").read_text())
    onnx_path = args.package / card.get("onnx", "model.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def tensors(values: Any) -> list[Tensor]:
        return [Tensor(name=v.name, dtype=ORT_TO_NUMPY[v.type], shape=tuple(d if isinstance(d, int) else -1 for d in v.shape))
                for v in values]  # fmt: skip

    inputs, outputs = tensors(session.get_inputs()), tensors(session.get_outputs())
    names = [o.name for o in outputs]
    delay_s = args.delay_ms / 1000.0

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:  # PyTriton's requests: mappings of name to array
        if delay_s:
            time.sleep(delay_s)
        return [dict(zip(names, session.run(names, dict(request.items())))) for request in requests]

    config = TritonConfig(
        grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
        grpc_address=args.address, http_address=args.address, metrics_address=args.address,
        grpc_use_ssl=True if args.tls_cert else None, grpc_server_cert=args.tls_cert, grpc_server_key=args.tls_key,
        exit_timeout_secs=2,
    )  # fmt: skip
    name = args.model_name or card["name"]
    # PyTriton guards shared memory, the model repository and statistics with a token by default; a stock
    # tritonserver does not. Shared memory stays open here, as there (the server listens on --address only).
    security = TritonSecurityConfig(restricted_endpoints=["model-repository", "statistics"])
    with Triton(config=config, security_config=security) as triton:
        triton.bind(model_name=name, infer_func=infer, inputs=inputs, outputs=outputs,
                    config=ModelConfig(batching=False))  # fmt: skip
        triton.run()  # in the background: the model is loaded and ready when this returns
        print(f"ready grpc={args.grpc_port} http={args.http_port} model={name}", flush=True)
        stop = {"now": False}

        def end(*_: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, end)
        signal.signal(signal.SIGTERM, end)
        while not stop["now"] and triton.is_alive():
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
