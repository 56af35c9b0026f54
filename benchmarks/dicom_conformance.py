"""How many DICOM files come out right: every file that ships with pydicom plus the built cases, read by
`calibration.dicom` and compared with the independent reference of tests/calibration/dicom_reference.py.

Each file lands in one class:
- correct: the reference can show it, and ours matches (saturation, correlation, within one grey level);
- refused: the reference cannot show it either (or it is a built case that must be refused, such as uncompressed
  YBR_ICT, which pydicom would show as if it were RGB), and ours refuses it, or the bad frames in it, naming the file;
- wrong: any other outcome (a different picture, a crash, a refusal of a file the reference can show,
  or frames for a file that has none).

`--reader PATH` reads with the `calibration` package of another checkout (for before/after figures).
Prints the counts and the wrong files, and writes JSON to benchmarks/results/dicom_conformance.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reader", type=Path, help="checkout whose calibration package does the reading")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "dicom_conformance.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    import pydicom.data

    from tests.calibration.dicom_reference import read, reference_frames
    from tests.calibration.make_dicom import REFUSED, RENDERED, write
    from tests.calibration.test_dicom_reference import BUNDLED, BUNDLED_ROOT, assert_matches_reference

    if args.reader:  # the reader's own calibration package, in place of this checkout's
        for module in [m for m in sys.modules if m == "calibration" or m.startswith("calibration.")]:
            del sys.modules[module]
        sys.path.insert(0, str(args.reader.resolve()))
    from calibration.dicom import DicomError, iter_dicom_frames

    with tempfile.TemporaryDirectory() as tmp:
        built = [write(b(), Path(tmp) / f"{name}.dcm") for name, b in {**RENDERED, **REFUSED}.items()]
        cases = [(str(p.relative_to(BUNDLED_ROOT)), p) for p in BUNDLED] + [(f"built/{p.name}", p) for p in built]
        outcome: dict[str, list[str]] = {"correct": [], "refused": [], "wrong": []}
        reasons: dict[str, str] = {}
        for name, path in cases:
            try:
                reference = reference_frames(read(str(path)))
            except Exception:
                reference = None
            must_refuse = path.stem in REFUSED
            try:
                frames = list(iter_dicom_frames(path)[1])
            except DicomError as exc:
                ok = (reference is None or must_refuse) and str(path) in str(exc)
                outcome["refused" if ok else "wrong"].append(name)
                if not ok:
                    reasons[name] = f"refused: {str(exc).removeprefix(str(path) + ': ')[:120]}"
                continue
            except Exception as exc:
                outcome["wrong"].append(name)
                reasons[name] = f"crash: {exc.__class__.__name__}: {str(exc)[:100]}"
                continue
            if must_refuse:  # a built case with some bad frames: those frames must be left out
                good = reference is not None and len(frames) < len(reference)
                outcome["refused" if good else "wrong"].append(name)
                if not good:
                    reasons[name] = "a frame that must be refused was shown"
                continue
            if reference is None:
                # the reference cannot show it; a file with frames pydicom can't decode (salvaged) lands here
                outcome["wrong"].append(name)
                reasons[name] = "frames for a file the reference cannot show"
                continue
            try:
                assert_matches_reference(frames, reference, name)
                outcome["correct"].append(name)
            except AssertionError as exc:
                outcome["wrong"].append(name)
                reasons[name] = str(exc).splitlines()[0][:140]
    counts = {k: len(v) for k, v in outcome.items()}
    by_group = {
        group: {k: sum(n.startswith("built/") == (group == "built") for n in v) for k, v in outcome.items()}
        for group in ("bundled", "built")
    }
    print(f"reader: {args.reader or ROOT}")
    print(f"{len(cases)} files: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(
        f"  {len(BUNDLED)} bundled with pydicom {pydicom.__version__}: "
        + ", ".join(f"{k} {v}" for k, v in by_group["bundled"].items())
    )
    print(
        f"  {len(built)} built (tests/calibration/make_dicom.py): "
        + ", ".join(f"{k} {v}" for k, v in by_group["built"].items())
    )
    for name in outcome["wrong"]:
        print(f"  wrong: {name}: {reasons[name]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "reader": str(args.reader or "this checkout"),
                "counts": counts,
                "by_group": by_group,
                "wrong": reasons,
                "pydicom": pydicom.__version__,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
