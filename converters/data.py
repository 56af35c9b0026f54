"""Evaluation and range-measurement feeds from a named source, preprocessed exactly as the daemon does.

A source is any frame source (`calibration.sources`: DICOM, images, video, arrays, `synthetic[:...]`), read with a
model card through the shared `Preprocessor` and sampled for diversity (`Sampling`),
or `random[:seed=S]`: standard-normal tensors of the model's input shapes. Random feeds do not represent real
data; they suit numeric equivalence checks, and reports say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from calibration.preprocessing import Preprocessor
from calibration.sources import Sampling, SourceError, SourceFrame, Split, sample_source, sample_splits
from converters.evaluate import Feed
from converters.graph import ConversionError, real_inputs
from edge_runtime.core.package import InputCard, ModelCard

Card = ModelCard | InputCard  # what preprocessing needs: a full card, or a raw card's input half


@dataclass(frozen=True)
class EvalData:
    feeds: list[Feed]
    description: str
    representative: bool  # False for random tensors


def _random_feeds(model: onnx.ModelProto, samples: int, options: str, seed: int, offset: int = 0) -> EvalData:
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        if key != "seed" or not value.isdigit():
            raise ConversionError(f"random: unknown option '{item}' (only seed=N)")
        seed = int(value) + offset
    rng = np.random.default_rng(seed)
    specs = []
    for inp in real_inputs(model.graph):
        dims = inp.type.tensor_type.shape.dim
        if not all(d.HasField("dim_value") for d in dims):
            raise ConversionError(
                f"random data needs static input shapes; '{inp.name}' is {[d.dim_param or d.dim_value for d in dims]} (use --input-shape)"
            )
        if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ConversionError(f"random data supports float inputs only; '{inp.name}' is not float")
        specs.append((inp.name, [d.dim_value for d in dims]))
    feeds = [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in specs} for _ in range(samples)]
    return EvalData(feeds, f"{samples} random standard-normal inputs (seed {seed}); not representative data", False)


def is_random(source: str) -> bool:
    return source == "random" or source.startswith("random:")


def load_splits(
    sources: Mapping[str, tuple[str, Split]], model: onnx.ModelProto, card: Card | None, sampling: Sampling
) -> dict[str, EvalData]:
    """Feeds for each named split (split name -> (source, split)): splits that share a source get disjoint frames
    of it (`calibration.sources.sample_splits`); random tensors draw each split from its own seed."""
    by_source: dict[str, list[Split]] = {}
    for source, split in sources.values():
        by_source.setdefault(source, []).append(split)
    out: dict[str, EvalData] = {}
    for source, splits in by_source.items():
        if is_random(source):
            for split in splits:
                out[split.name] = _random_feeds(
                    model, split.count, source.partition(":")[2], sampling.seed + split.offset, split.offset
                )
            continue
        if card is None:
            raise _needs_card(source)
        try:
            parts = sample_splits(source, splits, sampling, card.dicom_output)
        except (SourceError, ValueError) as exc:
            raise ConversionError(f"data source '{source}': {exc}") from None
        for name, (frames, description) in parts.items():
            out[name] = _preprocess(frames, description, card)
    return out


def _needs_card(source: str) -> ConversionError:
    return ConversionError(
        f"data source '{source}' gives images, which need a model card for preprocessing: pass --card model.json "
        "or a model package, or use --data random"
    )


def _preprocess(frames: Sequence[SourceFrame], description: str, card: Card) -> EvalData:
    pre = Preprocessor(card.preprocess)
    feeds = [{card.input_name: pre(f.pixels, f.color)[0]} for f in frames]
    return EvalData(feeds, f"{description}, preprocessed as the daemon does", True)


def load_feeds(source: str, model: onnx.ModelProto, card: Card | None, sampling: Sampling) -> EvalData:
    """Feeds from `source`, chosen as `sampling` says, preprocessed as the daemon does (random tensors for
    `random[:seed=S]`)."""
    if is_random(source):
        return _random_feeds(model, sampling.count, source.partition(":")[2], sampling.seed)
    if card is None:
        raise _needs_card(source)
    try:
        frames, description = sample_source(source, sampling, card.dicom_output)
    except (SourceError, ValueError) as exc:
        raise ConversionError(f"data source '{source}': {exc}") from None
    return _preprocess(frames, description, card)
