"""The onnxruntime engine of ``calibrate``: main-graph tensors folded sample by sample.

Two ways to reach a tensor, chosen per tensor:

- reduced (min-max only, no histogram method asked): a copy of the model gets ``Shape``, ``ReduceMin`` and
  ``ReduceMax`` nodes on the tensor, ``ReduceL1`` over short trailing runs whose float64 sum gives sum |x|
  (as the full path sums in float64), and with ``channel_axis`` ``ReduceMin``/``ReduceMax`` over every axis
  but the channel axis; float16 goes through one ``Cast`` to float first. Only those few values are fetched
  per sample. ``ReduceMin``/``ReduceMax`` do not reliably propagate NaN, but the L1 sum does (NaN and inf both
  make it non-finite), so a sample whose L1 is not finite (NaN/inf inside, or a float32 overflow) is re-run
  through a second session that exposes the full tensors of just those names, folded the ordinary way:
  min/max/count are exactly those of the full path, mean |x| within float rounding. Empty tensors are fine
  (the reductions give +-inf / 0 and only ``updates`` counts them, as on the full path).
- full: the tensor becomes an extra graph output, is copied out and folded in numpy (histogram methods, a
  type not known statically or not float32/float64/float16, per-channel statistics of a tensor whose rank
  is unknown or 1).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt import model_io
from onnxopt.model_io import subgraph_protos

log = logging.getLogger(__name__)

_LARGE = 1_800_000_000  # bytes: above this the augmented model goes through a file with external data
_REDUCIBLE = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16}
# Off by default: on mobilenetv2 (2 cores) the ~900 small reduce nodes cost onnxruntime more than copying the
# tensors out and scanning them in numpy (bench/calibration_memory.py --variants). True: min-max calibration
# takes the reduced path where it can.
GRAPH_REDUCTIONS = False


class Folder(Protocol):
    def __call__(self, name: str, value: Any) -> None: ...

    def reduced(self, name: str, ndim: int, size: int, mn: float, mx: float, sum_abs: float,
                channel_min: np.ndarray | None, channel_max: np.ndarray | None) -> None: ...


@dataclass
class _Reduction:
    """The output names the augmented graph gives one reduced tensor."""

    name: str
    shape: str
    min: str
    max: str
    l1: str
    channel_min: str | None = None
    channel_max: str | None = None

    def outputs(self) -> list[str]:
        return [o for o in (self.shape, self.min, self.max, self.l1, self.channel_min, self.channel_max) if o]


def _all_names(graph: onnx.GraphProto, into: set[str]) -> set[str]:
    into.update(vi.name for vi in [*graph.input, *graph.output, *graph.value_info])
    into.update(i.name for i in graph.initializer)
    for node in graph.node:
        into.update(node.input)
        into.update(node.output)
        into.add(node.name)
        for g in subgraph_protos(node):
            _all_names(g, into)
    return into


def _static_rank(vi: onnx.ValueInfoProto | None) -> int | None:
    if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    return len(vi.type.tensor_type.shape.dim)


def _static_dims(vi: onnx.ValueInfoProto | None) -> list[int | None] | None:
    if _static_rank(vi) is None:
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


_PARTIAL = 4096  # at most this many float32 values summed in one run before the float64 sum


def _partial_axes(dims: list[int | None] | None) -> list[int] | None:
    """Trailing axes whose runs ReduceL1 sums in float32 (None: all axes, for ranks 0 and 1).

    The last axis always, then the axis before while the known run length stays within ``_PARTIAL``: each
    float32 run is short, the float64 sum of the runs keeps ``sum |x|`` within float rounding of numpy's.
    """
    if not dims or len(dims) < 2:
        return None
    axes, run = [len(dims) - 1], dims[-1]
    for i in range(len(dims) - 2, -1, -1):
        if run is None or dims[i] is None or run * dims[i] > _PARTIAL:
            break
        axes.insert(0, i)
        run *= dims[i]
    return None if len(axes) == len(dims) else axes


def _default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def plan(names: list[str], types: Mapping[str, int], value_infos: Mapping[str, onnx.ValueInfoProto],
         channel_axis: int | Mapping[str, int] | None, histograms: bool) -> tuple[list[str], list[str]]:
    """Split ``names`` into (reduced, full)."""
    if histograms or not GRAPH_REDUCTIONS:
        return [], list(names)
    reduced, full = [], []
    for name in names:
        ok = types.get(name) in _REDUCIBLE
        axis = channel_axis.get(name) if isinstance(channel_axis, Mapping) else channel_axis
        if ok and axis is not None:
            rank = _static_rank(value_infos.get(name))
            # rank unknown: the axes to reduce are unknown; rank 1: per-channel values are the tensor itself
            ok = rank is not None and not (rank == 1 and -1 <= axis < 1)
        (reduced if ok else full).append(name)
    return reduced, full


def augment(model: onnx.ModelProto, value_infos: Mapping[str, onnx.ValueInfoProto], types: Mapping[str, int],
            full: list[str], reduced: list[str],
            channel_axis: int | Mapping[str, int] | None) -> tuple[onnx.ModelProto, list[_Reduction]]:
    """A copy of ``model`` exposing ``full`` as outputs and the reductions of ``reduced``."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    g = aug.graph
    present = {o.name for o in g.output}
    for name in full:
        if name not in present:
            g.output.append(value_infos.get(name) or onnx.ValueInfoProto(name=name))
            present.add(name)
    if not reduced:
        return aug, []
    taken = _all_names(model.graph, set())

    def fresh(base: str) -> str:
        cand, i = base, 0
        while cand in taken:
            i += 1
            cand = f"{base}_{i}"
        taken.add(cand)
        return cand

    opset = _default_opset(aug)
    if opset is None:
        opset = 17
        aug.opset_import.append(helper.make_opsetid("", opset))
    axes_as_input = opset >= 18

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> None:
        added.append(helper.make_node(op, inputs, [out], name=fresh(f"calib/{op}/{out}"), **attrs))

    def reduce(op: str, src: str, out: str, axes: list[int] | None, elem: int) -> None:
        if axes is None:
            node(op, [src], out, keepdims=0)
            g.output.append(helper.make_tensor_value_info(out, elem, []))
            return
        if axes_as_input:
            axes_name = fresh(f"{out}/axes")
            g.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
            node(op, [src, axes_name], out, keepdims=0)
        else:
            node(op, [src], out, keepdims=0, axes=axes)
        g.output.append(helper.make_tensor_value_info(out, elem, [None]))

    plans = []
    after: dict[str, list[onnx.NodeProto]] = {}  # tensor -> its reduction nodes
    for name in reduced:
        added = after[name] = []
        elem = types[name]
        src = name
        if elem == TensorProto.FLOAT16:
            src = fresh(f"{name}/calib_float")
            node("Cast", [name], src, to=TensorProto.FLOAT)
            elem = TensorProto.FLOAT
        r = _Reduction(name, fresh(f"{name}/calib_shape"), fresh(f"{name}/calib_min"), fresh(f"{name}/calib_max"),
                       fresh(f"{name}/calib_l1"))
        node("Shape", [name], r.shape)
        g.output.append(helper.make_tensor_value_info(r.shape, TensorProto.INT64, [None]))
        for op, out in (("ReduceMin", r.min), ("ReduceMax", r.max)):
            reduce(op, src, out, None, elem)
        # sum |x| as float64 (as the full path) from float32 partial sums over short trailing runs
        partial = fresh(f"{name}/calib_l1_partial")
        dims = _static_dims(value_infos.get(name))
        axes = _partial_axes(dims)
        if axes is None:
            node("ReduceL1", [src], partial, keepdims=0)
        elif axes_as_input:
            axes_name = fresh(f"{partial}/axes")
            g.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
            node("ReduceL1", [src, axes_name], partial, keepdims=0)
        else:
            node("ReduceL1", [src], partial, keepdims=0, axes=axes)
        if elem != TensorProto.DOUBLE:
            cast = fresh(f"{partial}/double")
            node("Cast", [partial], cast, to=TensorProto.DOUBLE)
            partial = cast
        node("ReduceSum", [partial], r.l1, keepdims=0)
        g.output.append(helper.make_tensor_value_info(r.l1, TensorProto.DOUBLE, []))
        axis = channel_axis.get(name) if isinstance(channel_axis, Mapping) else channel_axis
        rank = _static_rank(value_infos.get(name))
        if axis is not None and rank is not None and -rank <= axis < rank:
            axes = [i for i in range(rank) if i != axis % rank]
            r.channel_min, r.channel_max = fresh(f"{name}/calib_cmin"), fresh(f"{name}/calib_cmax")
            reduce("ReduceMin", src, r.channel_min, axes, elem)
            reduce("ReduceMax", src, r.channel_max, axes, elem)
        plans.append(r)
    # each tensor's reductions right after its producer: onnxruntime runs them while the tensor is still in
    # cache and frees it as before, instead of keeping every intermediate alive to the end of the graph
    nodes = list(g.node)
    del g.node[:]
    for n in nodes:
        g.node.append(n)
        for out in n.output:
            g.node.extend(after.pop(out, []))
    for rest in after.values():  # tensors no node of the main graph produces (none expected)
        g.node.extend(rest)
    return aug, plans


def _session(aug: onnx.ModelProto, tmp: str, tag: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers = ["CPUExecutionProvider"]
    if model_io.is_large(aug) or model_io.data_bytes(aug) > _LARGE:  # never ByteSize(): it serializes the model
        path = os.path.join(tmp, f"{tag}.onnx")
        model_io.write_model(aug, path, f"{tag}.onnx.data")  # weights copied file to file, never held twice
        return ort.InferenceSession(path, so, providers=providers)
    return ort.InferenceSession(aug.SerializeToString(), so, providers=providers)


def run(model: onnx.ModelProto, feeds: list[str], value_infos: Mapping[str, onnx.ValueInfoProto],
        types: Mapping[str, int], names: list[str], data, fold: Folder, progress_bar,
        channel_axis: int | Mapping[str, int] | None, histograms: bool) -> None:
    """Fold every sample of ``data`` (through ``progress_bar``) into ``fold`` for ``names``."""
    from_feeds = [n for n in names if n in feeds]
    computed = [n for n in names if n not in feeds]
    reduced, full = plan(computed, types, value_infos, channel_axis, histograms)
    aug, plans = augment(model, value_infos, types, full, reduced, channel_axis)
    fetch = [*full, *(o for r in plans for o in r.outputs())]
    log.info("onnxruntime calibration: %d tensor(s) reduced in the graph, %d fetched whole",
             len(plans), len(full))
    by_name = {r.name: r for r in plans}
    fallback = None
    with tempfile.TemporaryDirectory(prefix="onnxopt-calib-") as tmp:
        sess = _session(aug, tmp, "augmented")
        del aug
        for feed in progress_bar(data):
            for name in from_feeds:
                fold(name, feed[name])
            if not fetch:
                continue
            values = dict(zip(fetch, sess.run(fetch, feed), strict=True))
            redo = []
            for name in computed:  # in the order of names, as the full path folds them
                r = by_name.get(name)
                if r is None:
                    fold(name, values.pop(name))
                    continue
                shape = values[r.shape]
                size = int(np.prod(shape)) if shape.size else 1
                l1 = float(values[r.l1])
                if size and not math.isfinite(l1):  # NaN/inf inside (or a float32 overflow): fold it whole
                    redo.append(r.name)
                    continue
                fold.reduced(
                    r.name, int(shape.size), size, float(values[r.min]), float(values[r.max]), l1,
                    None if r.channel_min is None else values[r.channel_min].astype(np.float64),
                    None if r.channel_max is None else values[r.channel_max].astype(np.float64),
                )
            del values
            if redo:
                if fallback is None:
                    log.info("a sample holds NaN/inf in %r: exposing the reduced tensors whole for such samples",
                             redo[0])
                    fallback = _session(augment(model, value_infos, types, reduced, [], None)[0], tmp, "fallback")
                for name, value in zip(redo, fallback.run(redo, feed), strict=True):
                    fold(name, value)
