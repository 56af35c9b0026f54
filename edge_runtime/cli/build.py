"""`edgert build`: a TensorRT engine for a package on this device, cached by content."""

from __future__ import annotations

import argparse
from pathlib import Path

from converters.kinds import Builder, HardwareCompat, Int8Path, Sparse
from edge_runtime.backends.engine_cache import OnMismatch
from edge_runtime.cli.common import (
    Command,
    ExitCode,
    Output,
    UsageError,
    _json_argument,
    choices_of,
)


def _build(args: argparse.Namespace, out: Output) -> int:
    import shutil

    from converters.engine import (
        Builder,
        BuildOptions,
        HardwareCompat,
        Int8Path,
        Sparse,
        TrtVersion,
        build_engine,
        installed_version,
        parse_shapes,
        plan_build,
        shape_profiles,
        trtexec_command,
    )
    from edge_runtime.backends.engine_cache import EngineCache, OnMismatch
    from edge_runtime.core.package import load_package

    package = load_package(args.package)
    if args.shapes and args.opt_shapes:
        raise UsageError("--shapes and --opt-shapes say the same thing: give one")
    opt = args.opt_shapes or args.shapes
    if (args.min_shapes or args.max_shapes) and not opt:
        raise UsageError("--min-shapes/--max-shapes need --opt-shapes (or --shapes)")
    profiles = (
        shape_profiles(
            parse_shapes(opt),
            parse_shapes(args.min_shapes) if args.min_shapes else None,
            parse_shapes(args.max_shapes) if args.max_shapes else None,
        )
        if opt
        else ()
    )
    options = BuildOptions(
        workspace_mib=args.workspace, opt_level=args.opt_level, shapes=profiles, timing_cache=args.timing_cache,
        dla_core=args.dla_core, gpu_fallback=not args.no_gpu_fallback, sparse=Sparse(args.sparse),
        hardware_compat=HardwareCompat(args.hardware_compat), version_compatible=args.version_compatible,
        int8_path=Int8Path(args.int8_path), device=args.device,
    )  # fmt: skip
    if args.print_trtexec:
        found = installed_version()
        version = TrtVersion.parse(args.trt_version) if args.trt_version else found[0] if found else None
        if version is None:
            raise UsageError("no TensorRT here to take the version from: give --trt-version (e.g. 10.3.0)")
        plan = plan_build(package, options, version, out.progress)
        engine_out = (args.out or Path(".")) / "model.engine"
        cmd = trtexec_command(plan, engine_out, engine_out.with_name("layers.json"))
        out.say(" ".join(cmd))
        out.result({"trt_version": str(version), "command": cmd, "notes": list(plan.notes)})
        return ExitCode.OK
    result = build_engine(
        package, options, cache=EngineCache(args.cache) if args.cache else None, on_mismatch=OnMismatch(args.on_mismatch),
        rebuild=args.rebuild, builder=Builder(args.builder), say=out.progress,
    )  # fmt: skip
    engine = result.engine
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("manifest.json", "layers.json"):
            if (engine.parent / name).is_file():
                shutil.copy2(engine.parent / name, args.out / name)
        shutil.copy2(engine, args.out / "model.engine")
        engine = args.out / "model.engine"
    plan = result.plan
    out.say(f"{package.card.name} {package.card.version}: {'cached' if result.cached else 'built'} engine {engine}")
    out.say(f"  TensorRT {plan.trt_version} on {result.platform.gpu_name} (compute {result.platform.compute_capability})"
            f", {plan.precision.value}, {'strongly' if plan.strongly_typed else 'weakly'} typed, "
            f"flags {', '.join(plan.builder_flags) or 'none'}, via {result.builder.value}")  # fmt: skip
    out.say(f"  layers: {result.layers.summary()}")
    for note in plan.notes:
        out.say(f"  note: {note}")
    out.result({
        "engine": str(engine), "cached": result.cached, "build_seconds": round(result.seconds, 3),
        "trt_version": str(plan.trt_version), "gpu": result.platform.gpu_name,
        "compute_capability": result.platform.compute_capability, "precision": plan.precision.value,
        "strongly_typed": plan.strongly_typed, "builder_flags": list(plan.builder_flags),
        "sparse_layers": list(plan.sparse_layers), "layer_precisions": result.layers.counts,
        "builder": result.builder.value, "notes": list(plan.notes),
    })  # fmt: skip
    return ExitCode.OK


def add_parser(command: Command) -> None:
    p = command("build", "build a TensorRT engine for a model package on this device (cached by content)", _build)
    p.add_argument("package", help="model package (converted: FP16 typed graph or Q/DQ INT8 graph)")
    p.add_argument("-o", "--out", type=Path, help="also copy model.engine, manifest.json and layers.json here")
    p.add_argument("--cache", type=Path, help="engine cache folder (default $EDGERT_ENGINE_CACHE, else "
                   "~/.cache/edgert/engines)")  # fmt: skip
    p.add_argument("--workspace", type=int, metavar="MIB", help="workspace memory pool limit in MiB "
                   "(trtexec --memPoolSize=workspace:N)")  # fmt: skip
    p.add_argument("--opt-level", type=int, help="builder optimization level 0..5 (TensorRT's default 3)")
    p.add_argument("--shapes", help="optimization profile opt shapes, NAME:1x3x256x256[,...] (as trtexec; "
                   "default: the card's input shape for dynamic inputs)")  # fmt: skip
    p.add_argument("--min-shapes", help="profile min shapes (default: the opt shapes)")
    p.add_argument("--opt-shapes", help="same as --shapes")
    p.add_argument("--max-shapes", help="profile max shapes (default: the opt shapes)")
    p.add_argument("--timing-cache", type=Path, help="timing cache file: read if present, updated after the build")
    p.add_argument("--dla-core", type=int, help="build for this DLA core (Jetson AGX Orin, Orin NX)")
    p.add_argument("--no-gpu-fallback", action="store_true", help="with --dla-core: fail if a layer cannot run "
                   "on the DLA (default: those layers run on the GPU)")  # fmt: skip
    p.add_argument("--sparse", choices=choices_of(Sparse), default=Sparse.AUTO.value,
                   help="sparse weights for 2:4 layers (auto: on when the card lists layers the pruner made 2:4)")  # fmt: skip
    p.add_argument("--hardware-compat", choices=choices_of(HardwareCompat), default=HardwareCompat.NONE.value,
                   help="one engine for several GPUs (dGPUs only; slower kernels)")  # fmt: skip
    p.add_argument("--version-compatible", action="store_true",
                   help="an engine later TensorRT versions can run (8.6+, lean runtime embedded)")  # fmt: skip
    p.add_argument("--int8-path", choices=choices_of(Int8Path), default=Int8Path.AUTO.value,
                   help="INT8 packages: explicit Q/DQ graph, or implicit (FP32 graph + calibration.cache; TensorRT "
                   "8.x/10.x; auto: implicit only for the DLA)")  # fmt: skip
    p.add_argument("--device", type=int, default=0, help="CUDA device (default 0)")
    p.add_argument("--builder", choices=choices_of(Builder), default=Builder.AUTO.value,
                   help="TensorRT's Python API, or trtexec (auto: the Python API if importable)")  # fmt: skip
    p.add_argument("--on-mismatch", choices=choices_of(OnMismatch), default=OnMismatch.REBUILD.value,
                   help="an engine cached for this model under another TensorRT or GPU: rebuild (default) or refuse")  # fmt: skip
    p.add_argument("--rebuild", action="store_true", help="build even when the cache has the engine")
    p.add_argument("--print-trtexec", action="store_true",
                   help="print the equivalent trtexec command line and exit (no TensorRT needed with --trt-version)")  # fmt: skip
    p.add_argument("--trt-version", help="with --print-trtexec: the target's TensorRT version (default: this one's)")
    _json_argument(p, "the build result")
