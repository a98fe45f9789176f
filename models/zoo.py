"""The synthetic model zoo: a registry of builders and inputs that suit each model.

Models are never committed; tests and benchmarks build them here (numpy weights with a fixed seed, no torch), so
the same name always gives the same bytes.

CLI: ``python -m onnxopt.models.zoo NAME -o out.onnx``
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from onnxopt.errors import UserError
from onnxopt.model_io import save_model

from .zoo_cnn import mobilenetv2, resnet18, small_cnn
from .zoo_misc import control_flow, dynamic, opset11_constants
from .zoo_transformer import bert

logger = logging.getLogger(__name__)

__all__ = ["ZOO", "build", "sample_inputs", "small_cnn", "resnet18", "mobilenetv2", "bert", "control_flow",
           "dynamic", "opset11_constants"]

ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "small_cnn": small_cnn,
    "resnet18": resnet18,
    "mobilenetv2": mobilenetv2,
    "bert": bert,
    "bert_decomposed": partial(bert, decomposed_layernorm=True),
    "control_flow": control_flow,
    "dynamic": dynamic,
    "opset11_constants": opset11_constants,
}

_BATCH_NAMES = {"batch", "batch_size", "n", "N"}


def build(name: str) -> onnx.ModelProto:
    """Build the zoo model `name` (see `ZOO`)."""
    try:
        builder = ZOO[name]
    except KeyError:
        raise UserError(f"unknown zoo model {name!r}; choose one of: {', '.join(ZOO)}") from None
    return builder()


def _dims(vi: onnx.ValueInfoProto, batch: int, sequence: int) -> list[int]:
    """Concrete dims for an input: symbolic batch-like dims (or any symbolic leading dim) -> batch, others ->
    sequence."""
    out = []
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.dim_param in _BATCH_NAMES or (i == 0 and "seq" not in d.dim_param):
            out.append(batch)
        else:
            out.append(sequence)
    return out


def sample_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = 1, sequence: int = 16) -> dict[str, np.ndarray]:
    """Sensible feeds for every non-initializer input of a zoo model.

    Images (float inputs) ~ N(0, 1); `*ids` within the vocabulary recorded in the model's metadata (0 on padded
    positions); `attention_mask` ones with a few zeros at the end of each row; `token_type_ids` zeros; other
    integer inputs small non-negative values; bool inputs random.
    """
    rng = np.random.default_rng(seed)
    meta = {p.key: p.value for p in model.metadata_props}
    max_seq = int(meta.get("onnxopt.max_sequence", 0)) or None
    if max_seq is not None and sequence > max_seq:
        raise UserError(f"sequence={sequence} exceeds this model's {max_seq} positions; pass sequence<={max_seq}")
    vocab = int(meta.get("onnxopt.vocab_size", 100))
    inits = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = _dims(vi, batch, sequence)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if vi.type.tensor_type.elem_type == TensorProto.BOOL:
            feeds[vi.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in vi.name:
            mask = np.ones(shape, dtype=dtype)
            if len(shape) == 2 and shape[1] > 1:
                for r in range(shape[0]):
                    pad = int(rng.integers(1, max(2, shape[1] // 4 + 1)))
                    mask[r, shape[1] - pad:] = 0
            feeds[vi.name] = mask
        elif "token_type" in vi.name:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
        elif "ids" in vi.name:
            feeds[vi.name] = rng.integers(1, vocab, size=shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 4, size=shape).astype(dtype)
    mask = feeds.get("attention_mask")
    if mask is not None and "input_ids" in feeds and mask.shape == feeds["input_ids"].shape:
        feeds["input_ids"] = np.where(mask == 0, 0, feeds["input_ids"]).astype(feeds["input_ids"].dtype)
    return feeds


def main(argv: list[str] | None = None) -> int:
    """Build one zoo model and save it; prints the output path."""
    parser = argparse.ArgumentParser(prog="python -m onnxopt.models.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(ZOO), help="zoo model to build")
    parser.add_argument("-o", "--output", type=Path, help="output .onnx path (default: NAME.onnx)")
    parser.add_argument("--check", action="store_true", help="run onnx.checker full check before saving")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = build(args.name)
    if args.check:
        onnx.checker.check_model(model, full_check=True)
    out = Path(args.output or f"{args.name}.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, out)  # atomic: a failure leaves no partial file
    logger.info("built %s: %d nodes, %d initializers", args.name, len(model.graph.node), len(model.graph.initializer))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
