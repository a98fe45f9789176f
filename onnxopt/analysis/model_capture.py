"""Calibration feeds streamed through onnxruntime: intermediate tensors, their statistics, the output error.

- ``calibration_feeds``: up to a number of feeds from the context's calibration data (``read_once``: whether
  reading them would consume what quantization needs);
- ``cut_model`` / ``capture``: the chosen intermediate tensors per feed, from ``proto`` cut down to what computes
  them, one feed at a time, so memory holds one feed's tensors, never all of them;
- ``capture_stats`` / ``channel_ranges``: per-channel statistics of tensors, streamed over the feeds;
- ``judged_tensors`` / ``output_error``: how far a (quantized) model's outputs are from the float reference's.

The layer-wise engine (``layerwise``) builds on these and re-exports them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxopt.pass_manager import PassContext
from onnxopt.verify import ort_session

Feed = dict[str, np.ndarray]


def calibration_feeds(proto: onnx.ModelProto, ctx: PassContext, limit: int) -> list[Feed] | None:
    """Up to ``limit`` feeds from ``ctx.calibration`` or the ``calibration`` option; None when there is none."""
    source = ctx.calibration if ctx.calibration is not None else ctx.option("calibration")
    if source is None:
        return None
    from onnxopt.calibration import input_specs_of, open_calibration_data

    data = open_calibration_data(source, input_specs_of(proto))
    feeds = []
    for feed in data:
        feeds.append(dict(feed))
        if len(feeds) >= limit:
            break
    return feeds or None


def read_once(ctx: PassContext) -> bool:
    """Whether ``ctx.calibration`` can be read only once (a reader or generator): quantization reads it, so a pass
    before quantization must not consume it."""
    return ctx.calibration is not None and not getattr(ctx.calibration, "reiterable", True)


def cut_model(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """``proto`` cut down to what computes ``names``, which become its only outputs (a re-fit reads one tensor
    at a time: running the rest of the model for it made capturing most of the re-fit time)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    if any(n.op_type in ("If", "Loop", "Scan") for n in g.node):  # outer-scope reads: keep the whole graph
        needed_nodes = list(g.node)
    else:
        need, needed_nodes = set(names), []
        for node in reversed(g.node):
            if any(o in need for o in node.output):
                needed_nodes.append(node)
                need.update(i for i in node.input if i)
        needed_nodes.reverse()
        used = {i for n in needed_nodes for i in n.input}
        keep_inits = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(keep_inits)
    del g.node[:]
    g.node.extend(needed_nodes)
    del g.output[:]
    g.output.extend(helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None) for n in names)
    return m


def capture(proto: onnx.ModelProto, feeds: Iterable[Feed], names: Sequence[str], optimize: bool = True
            ) -> Iterator[dict[str, np.ndarray]]:
    """Yield, per feed, ``{name: value}`` of the chosen intermediate tensors (onnxruntime; tensors asked for are
    graph outputs, which its graph optimizations keep)."""
    names = list(names)
    sess = ort_session(cut_model(proto, names), optimize=optimize)
    known = {i.name for i in sess.get_inputs()}
    for feed in feeds:
        yield dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in known}), strict=True))


def capture_stats(proto: onnx.ModelProto, feeds: Iterable[Feed], axes: dict[str, int]
                  ) -> dict[str, dict[str, np.ndarray]]:
    """Per-channel mean |x| and mean x^2 of each tensor in ``axes`` (name -> channel axis) over the feeds."""
    acc: dict[str, dict[str, Any]] = {}
    for values in capture(proto, feeds, list(axes)):
        for name, v in values.items():
            x = np.moveaxis(np.asarray(v, dtype=np.float64), axes[name], 0).reshape(v.shape[axes[name]], -1)
            s = acc.setdefault(name, {"abs": 0.0, "sq": 0.0, "n": 0})
            s["abs"] = s["abs"] + np.abs(x).sum(1)
            s["sq"] = s["sq"] + (x * x).sum(1)
            s["n"] += x.shape[1]
    return {k: {"abs": s["abs"] / s["n"], "sq": s["sq"] / s["n"]} for k, s in acc.items()}


@dataclass(frozen=True)
class ChannelRange:
    """Per-channel minimum, maximum and mean of a tensor over the calibration feeds."""

    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray


def channel_ranges(proto: onnx.ModelProto, feeds: Sequence[Feed], names: Sequence[str], axis: int = 1
                   ) -> dict[str, ChannelRange]:
    """``ChannelRange`` of each tensor in ``names`` along ``axis``, streamed over the feeds."""
    acc: dict[str, list[Any]] = {}
    for values in capture(proto, feeds, names):
        for name, v in values.items():
            x = np.moveaxis(np.asarray(v, dtype=np.float64), axis, 0).reshape(v.shape[axis], -1)
            if name not in acc:
                acc[name] = [x.min(1), x.max(1), x.sum(1), x.shape[1]]
            else:
                a = acc[name]
                a[0], a[1] = np.minimum(a[0], x.min(1)), np.maximum(a[1], x.max(1))
                a[2], a[3] = a[2] + x.sum(1), a[3] + x.shape[1]
    return {k: ChannelRange(a[0], a[1], a[2] / max(a[3], 1)) for k, a in acc.items()}


def judged_tensors(reference: onnx.ModelProto) -> list[str]:
    """What ``output_error`` compares: the graph outputs, a Softmax's input (the logits) in place of its output (on
    confident samples probabilities saturate, and their error says nothing of the logits' error)."""
    producers = {o: n for n in reference.graph.node for o in n.output}
    out = []
    for o in reference.graph.output:
        p = producers.get(o.name)
        out.append(p.input[0] if p is not None and p.op_type == "Softmax" and p.input[0] not in
                   {i.name for i in reference.graph.input} else o.name)
    return list(dict.fromkeys(out))


def output_error(reference: onnx.ModelProto, model: onnx.ModelProto, feeds: Sequence[Feed]) -> float:
    """sum over ``judged_tensors`` and ``feeds`` of (model - reference)^2 / reference^2: how far ``model`` (run with
    Q/DQ in float, as the spec says) is from the float ``reference``. ``model`` must have the reference's tensor
    names; where it lacks a judged tensor (a lowering renamed it) the graph outputs are compared instead."""
    names = judged_tensors(reference)
    have = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    if not set(names) <= have:  # a rewrite after quantization renamed the logits: compare the outputs themselves
        names = [o.name for o in reference.graph.output]
    ref_s, got_s = ort_session(cut_model(reference, names)), ort_session(cut_model(model, names), optimize=False)
    known = {i.name for i in ref_s.get_inputs()}
    num = den = 0.0
    for feed in feeds:
        f = {k: v for k, v in feed.items() if k in known}
        for r, g in zip(ref_s.run(names, f), got_s.run(names, f), strict=True):
            r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
            num, den = num + float(np.sum((g - r) ** 2)), den + float(np.sum(r * r))
    return num / max(den, 1e-30)

