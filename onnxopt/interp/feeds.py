"""The interpreter's inputs: ``InputSpec`` (what a graph input expects) and validation of the caller's feeds.

``spec_of`` reads an ``InputSpec`` from a graph input's ``ValueInfoProto``; ``validate_feeds`` checks feeds against
the specs (unknown names, missing inputs, dtype, rank, static dimensions) and raises ``UserError`` on a mismatch.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxopt.errors import UserError


@dataclass(frozen=True)
class InputSpec:
    """A graph input the caller must feed: name, numpy dtype (None if not a tensor) and shape.

    A dimension is an int (static), a str (symbolic) or None (unknown); ``shape`` is None for unknown rank.
    """

    name: str
    dtype: np.dtype | None
    shape: tuple[int | str | None, ...] | None


def spec_of(vi: onnx.ValueInfoProto) -> InputSpec:
    """The ``InputSpec`` of graph input ``vi``."""
    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is None:
        return InputSpec(vi.name, None, None)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
    shape = None
    if tt.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in tt.shape.dim
        )
    return InputSpec(vi.name, dtype, shape)


def validate_feeds(
    feeds: Mapping[str, Any], specs: list[InputSpec], optional: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """``feeds`` as numpy arrays, checked against the required inputs ``specs``.

    ``optional`` names inputs that may be fed but need not be (graph inputs with an initializer).
    """
    by_name = {s.name: s for s in specs}
    out: dict[str, np.ndarray] = {}
    for name, value in feeds.items():
        if name not in by_name and name not in optional:
            expected = ", ".join(by_name) or "none"
            raise UserError(f"feed {name!r} is not an input of the model; expected inputs: {expected}")
        out[name] = value if isinstance(value, np.ndarray) else np.asarray(value)
    for name, spec in by_name.items():
        if name not in out:
            raise UserError(
                f"input {name!r} is missing from the feeds (expected {spec.dtype} of shape "
                f"{list(spec.shape) if spec.shape is not None else 'any'}); given: {sorted(feeds)}"
            )
        arr = out[name]
        if spec.dtype is not None and arr.dtype != spec.dtype:
            raise UserError(f"input {name!r} expects dtype {spec.dtype}, given {arr.dtype}; cast the feed")
        if spec.shape is not None:
            if arr.ndim != len(spec.shape):
                raise UserError(
                    f"input {name!r} expects rank {len(spec.shape)} (shape {list(spec.shape)}), given shape "
                    f"{list(arr.shape)}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=False)):
                if isinstance(want, int) and want > 0 and want != got:
                    raise UserError(
                        f"input {name!r} expects shape {list(spec.shape)}, given {list(arr.shape)} "
                        f"(dimension {axis} is {got}, expected {want})"
                    )
    return out
