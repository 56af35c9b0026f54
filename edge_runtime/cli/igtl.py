"""`edgert igtl`: the OpenIGTLink bridge to 3D Slicer and from PLUS."""

from __future__ import annotations

import argparse

from edge_runtime.cli.common import (
    Command,
    ExitCode,
    Output,
    _client_keys,
    _ingest,
    _ingest_argument,
    _json_argument,
    _key_arguments,
    _stop_on_signal,
)


def _igtl(args: argparse.Namespace, out: Output) -> int:
    from edge_runtime.integrations.igtl import IgtlBridge, IgtlOptions, parse_source

    ingest = _ingest(args)  # said once when the old spelling is used
    options = IgtlOptions(
        results=args.results, preview=args.preview, port=args.port, stream_id=args.stream_id,
        spacing_mm=args.spacing, source=parse_source(args.source) if args.source else None,
        source_device=args.source_device, ingest=ingest, source_stream_id=args.source_stream_id,
        keys=_client_keys(args),
    )  # fmt: skip
    bridge = IgtlBridge(options)
    with _stop_on_signal() as stop:
        bridge.start()
        out.progress(f"OpenIGTLink server for Slicer on 127.0.0.1:{args.port}"
                     + (f"; images from {args.source} go to {ingest}" if args.source else ""))  # fmt: skip
        try:
            stop.wait()
        finally:
            bridge.stop()
    c = bridge.counts
    out.say(f"{c.sent} frames sent to Slicer, {c.skipped} skipped; {c.forwarded} forwarded from the source, "
            f"{c.dropped} dropped, {c.refused} refused")  # fmt: skip
    out.result({"sent": c.sent, "skipped": c.skipped, "forwarded": c.forwarded, "dropped": c.dropped,
                "refused": c.refused, "refusals": c.refusals})  # fmt: skip
    return ExitCode.OK


def _spacing(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y in mm such as 0.2,0.2, got {text!r}") from None
    return x, y


def add_parser(command: Command) -> None:
    p = command("igtl", "OpenIGTLink bridge: live frames and overlays to 3D Slicer, images from PLUS to the daemon",
                _igtl)  # fmt: skip
    p.add_argument("--results", default="tcp://127.0.0.1:5556", help="the daemon's results endpoint")
    p.add_argument("--preview", help="the daemon's preview endpoint (default: the one its heartbeats announce)")
    p.add_argument("--port", type=int, default=18944, help="port Slicer's OpenIGTLinkIF connects to (default 18944)")
    p.add_argument("--stream-id", type=int, help="the stream sent to Slicer (default: the first that sends)")
    p.add_argument("--spacing", type=_spacing, default=(1.0, 1.0), metavar="X,Y",
                   help="pixel spacing in mm for frames not from --source (default 1,1)")  # fmt: skip
    p.add_argument("--source", metavar="HOST:PORT", help="take IMAGE messages from this OpenIGTLink server (PLUS, "
                   "Slicer) and send them to the daemon")  # fmt: skip
    p.add_argument("--source-device", help="only this device's images (default: all)")
    _ingest_argument(p, "the daemon's ingest, for --source frames")
    p.add_argument("--source-stream-id", type=int, default=0, help="stream id of --source frames (default 0)")
    _key_arguments(p)
    _json_argument(p, "the counts")
