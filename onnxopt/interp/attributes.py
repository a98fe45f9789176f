"""Decoding of ONNX ``AttributeProto`` values into plain Python / numpy values for kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

_A = AttributeProto


def _tensor(t: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(t)


def _sparse(s: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(s.values)
    dims = tuple(s.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    idx = numpy_helper.to_array(s.indices)
    if idx.ndim == 1:  # linearised indices
        dense.reshape(-1)[idx] = values
    else:
        dense[tuple(idx.T)] = values
    return dense


def decode_attribute(attr: AttributeProto) -> Any:
    """The value of one attribute: ints, floats, str, numpy arrays, GraphProto, TypeProto or lists of them."""
    t = attr.type
    if t == _A.FLOAT:
        return float(attr.f)
    if t == _A.INT:
        return int(attr.i)
    if t == _A.STRING:
        return attr.s.decode("utf-8")
    if t == _A.TENSOR:
        return _tensor(attr.t)
    if t == _A.GRAPH:
        return attr.g
    if t == _A.SPARSE_TENSOR:
        return _sparse(attr.sparse_tensor)
    if t == _A.TYPE_PROTO:
        return attr.tp
    if t == _A.FLOATS:
        return [float(x) for x in attr.floats]
    if t == _A.INTS:
        return [int(x) for x in attr.ints]
    if t == _A.STRINGS:
        return [s.decode("utf-8") for s in attr.strings]
    if t == _A.TENSORS:
        return [_tensor(x) for x in attr.tensors]
    if t == _A.GRAPHS:
        return list(attr.graphs)
    if t == _A.SPARSE_TENSORS:
        return [_sparse(x) for x in attr.sparse_tensors]
    if t == _A.TYPE_PROTOS:
        return list(attr.type_protos)
    raise ValueError(f"attribute {attr.name!r} has unsupported type {t}")


def decode_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """All attributes of ``node`` as keyword arguments (names as in the spec)."""
    return {a.name: decode_attribute(a) for a in node.attribute}
