"""The layer-wise engine: one weighted layer at a time, its inputs and outputs as rows of a linear problem.

Pruning's reconstruction (ReconstructWeights), bias correction (CorrectBias) and the fitting of quantized weights
(FitQuantizedWeights) all see a layer the same way: ``Layer`` turns a Conv (2-D; grouped and depthwise ones group
by group), a Gemm or a MatMul with a constant 2-D weight into ``y[p, g, c] = x[p, g, :] @ w[g, :, c] + b`` over
sampled output positions ``p`` (im2col rows for a Conv), and the collection here streams calibration feeds through
onnxruntime to get those rows:

- ``capture`` (``model_capture``): the chosen intermediate tensors per feed, from ``proto`` cut down to what
  computes them (``cut_model``), one feed at a time, so memory holds one feed's tensors, never all of them;
- ``RowPlan``: the output positions each layer samples in each feed (fixed before any capture, in layer order, so
  the float model's targets and the fitted model's inputs are taken at the same places);
- ``targets``: one pass over the feeds on the float model gives every layer's sampled output rows (and, when asked,
  per-channel means over all positions and input patch means); ``inputs``: one pass on the model being fitted gives
  one layer's input rows, from the layers before it as already fitted.

Quantized models are captured with onnxruntime's graph optimizations off (``optimize=False``): Q/DQ then run as
the spec says, in float, the same on every host, instead of this CPU's fused int8 kernels.
The capture helpers (``capture``, ``cut_model``, ``calibration_feeds``, ``capture_stats``, ``channel_ranges``,
``output_error``) live in ``model_capture`` and are re-exported here; the solvers (ridge least squares, the SeqMSE
grid, AdaRound) are in ``layerwise_solvers``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.verify import ort_session

from .model_capture import (  # the capture helpers live in model_capture; callers import them from here too
    ChannelRange,  # noqa: F401
    Feed,
    calibration_feeds,  # noqa: F401
    capture,
    capture_stats,  # noqa: F401
    channel_ranges,  # noqa: F401
    cut_model,
    judged_tensors,  # noqa: F401
    output_error,  # noqa: F401
)

log = logging.getLogger(__name__)

FITTABLE = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Layer:
    """A weighted op as ``y[p, g, c] = x[p, g, :] @ w[g, :, c] + b``: ``groups`` independent problems of ``k``
    unknowns per output channel, ``cout`` output channels in all."""

    node: str
    op: str
    groups: int
    k: int
    cout: int
    weight_shape: tuple[int, ...]
    trans_b: bool = False
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    @staticmethod
    def of(node: gs.Node, w: np.ndarray | None) -> Layer | str:
        """The layer of ``node`` with weight ``w``, or the reason it is not one."""
        if w is None:
            return "weights are not constant"
        if node.op == "Conv":
            if w.ndim != 4 or node.attrs.get("auto_pad", "NOTSET") != "NOTSET":
                return "only 2-D Conv with explicit pads is fitted"
            g = int(node.attrs.get("group", 1))
            return Layer(node.name, "Conv", g, int(np.prod(w.shape[1:])), int(w.shape[0]), tuple(w.shape),
                         strides=tuple(node.attrs.get("strides", [1, 1])),
                         dilations=tuple(node.attrs.get("dilations", [1, 1])),
                         pads=tuple(node.attrs.get("pads", [0, 0, 0, 0])))
        if node.op == "Gemm":
            if node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0:
                return "Gemm with transA/alpha/beta is not fitted"
            if w.ndim != 2:
                return "Gemm weight is not 2-D"
            tb = bool(node.attrs.get("transB", 0))
            return Layer(node.name, "Gemm", 1, int(w.shape[1 if tb else 0]), int(w.shape[0 if tb else 1]),
                         tuple(w.shape), trans_b=tb)
        if node.op == "MatMul" and w.ndim == 2:
            return Layer(node.name, "MatMul", 1, int(w.shape[0]), int(w.shape[1]), tuple(w.shape))
        return f"{node.op} is not fitted"

    @property
    def cg(self) -> int:
        """Output channels per group."""
        return self.cout // self.groups

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as ``[groups, k, cout / groups]``."""
        if self.op == "Conv":
            return w.reshape(self.groups, self.cg, self.k).transpose(0, 2, 1)
        return (w.T if self.trans_b else w)[None]

    def weight(self, m: np.ndarray) -> np.ndarray:
        """Inverse of ``matrix``."""
        if self.op == "Conv":
            return m.transpose(0, 2, 1).reshape(self.weight_shape)
        return m[0].T if self.trans_b else m[0]

    def out_axis(self) -> int:
        """The axis of the weight that indexes output channels."""
        return 0 if self.op == "Conv" or self.trans_b else 1

    def rows_total(self, y_shape: Sequence[int]) -> int:
        """Output positions in an output of shape ``y_shape`` (rows of the linear problem)."""
        if self.op == "Conv":
            return int(y_shape[0] * y_shape[2] * y_shape[3])
        return int(np.prod(y_shape[:-1]))

    def out_rows(self, y: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """``y`` at flattened positions ``pos``: [P, cout]."""
        y = np.asarray(y)
        if self.op == "Conv":
            return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])[pos]
        return y.reshape(-1, y.shape[-1])[pos]

    def in_rows(self, x: np.ndarray, pos: np.ndarray, y_shape: Sequence[int]) -> np.ndarray:
        """Input rows at output positions ``pos``: [P, groups * k] (im2col for a Conv, group-major)."""
        if self.op == "Conv":
            return patches(x, self, pos, tuple(y_shape[2:]))
        x = np.asarray(x)
        return x.reshape(-1, x.shape[-1])[pos]

    def in_means(self, x: np.ndarray, y_shape: Sequence[int]) -> tuple[np.ndarray, int]:
        """Sum over every output position of the input rows, [groups * k], and the number of positions: the mean
        input row, for mean output shifts (a Conv's zero padding counts as zeros, as the Conv sees it)."""
        x = np.asarray(x, dtype=np.float64)
        if self.op != "Conv":
            r = x.reshape(-1, x.shape[-1])
            return r.sum(0), len(r)
        kh, kw = self.weight_shape[2:]
        (sh, sw), (dh, dw), p = self.strides, self.dilations, self.pads
        xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
        oh, ow = int(y_shape[2]), int(y_shape[3])
        out = np.empty((x.shape[1], kh, kw))
        for i in range(kh):
            for j in range(kw):
                win = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, i, j] = win.sum(axis=(0, 2, 3))
        return out.reshape(-1), x.shape[0] * oh * ow  # channel-major = group-major rows of k


def patches(x: np.ndarray, layer: Layer, pos: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Rows of im2col(x) at flattened output positions ``pos`` (over n, oh, ow): [P, C*kh*kw]."""
    kh, kw = layer.weight_shape[2:]
    sh, sw = layer.strides
    dh, dw = layer.dilations
    pads = layer.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, rem = np.divmod(pos, out_hw[0] * out_hw[1])
    oh, ow = np.divmod(rem, out_hw[1])
    rows = oh[:, None] * sh + np.arange(kh)[None] * dh
    cols = ow[:, None] * sw + np.arange(kw)[None] * dw
    p = xp[n[:, None, None, None], np.arange(x.shape[1])[None, :, None, None], rows[:, None, :, None],
           cols[:, None, None, :]]
    return p.reshape(len(pos), -1)


ROWS_PER_UNKNOWN, MIN_ROWS, MAX_ROWS = 8, 2048, 16384


def rows_for(unknowns: int) -> int:
    """Sampled positions for a fit with ``unknowns`` weights per output: a few times more rows than unknowns, so the
    fit generalizes beyond the calibration data instead of interpolating it."""
    return int(min(MAX_ROWS, max(MIN_ROWS, ROWS_PER_UNKNOWN * unknowns)))


def held_out(i: int) -> bool:
    """Whether feed ``i`` is held out to choose a fit's strength (one in four, whole samples)."""
    return i % 4 == 3


@dataclass
class RowPlan:
    """Sampled output positions per layer (by output tensor name) and per feed, and the output shapes."""

    positions: dict[str, list[np.ndarray]]
    shapes: dict[str, list[tuple[int, ...]]]

    def held(self, out: str) -> np.ndarray:
        """Per sampled row of ``out``: whether its feed is held out."""
        return np.concatenate([np.full(len(p), held_out(i)) for i, p in enumerate(self.positions[out])])


def plan_rows(proto: onnx.ModelProto, feeds: Sequence[Feed], layers: Sequence[tuple[Layer, str]],
              per_feed: Callable[[Layer, int], int], rng: np.random.Generator) -> RowPlan:
    """Positions for each ``(layer, output tensor)``, drawn layer by layer and feed by feed from ``rng``
    (``per_feed(layer, feeds)`` rows per feed, all of them when fewer). Output shapes come from one run of the
    float model per distinct input shape."""
    outs = [o for _, o in layers]
    if not outs:
        return RowPlan({}, {})
    shapes: dict[str, list[tuple[int, ...]]] = {o: [] for o in outs}
    seen: dict[tuple, dict[str, tuple[int, ...]]] = {}
    sess = None
    for feed in feeds:
        key = tuple(sorted((k, np.shape(v)) for k, v in feed.items()))
        if key not in seen:
            sess = sess or ort_session(cut_model(proto, outs))
            known = {i.name for i in sess.get_inputs()}
            vals = sess.run(outs, {k: v for k, v in feed.items() if k in known})
            seen[key] = {o: tuple(np.shape(v)) for o, v in zip(outs, vals, strict=True)}
        for o in outs:
            shapes[o].append(seen[key][o])
    positions: dict[str, list[np.ndarray]] = {}
    for layer, o in layers:
        n = per_feed(layer, len(feeds))
        pos = []
        for shape in shapes[o]:
            total = layer.rows_total(shape)
            pos.append(np.sort(rng.choice(total, size=min(n, total), replace=False)))
        positions[o] = pos
    return RowPlan(positions, shapes)


@dataclass
class Targets:
    """The float model's sampled output rows per layer output ([P, cout]), and what else was asked: per-channel
    output sums over all positions, input row sums (with their position counts), in all and per feed."""

    rows: dict[str, np.ndarray]
    out_sums: dict[str, np.ndarray]
    in_sums: dict[str, np.ndarray]
    counts: dict[str, int]
    inputs: dict[str, np.ndarray]  # by output name: the input rows at its sampled positions
    feed_out_sums: dict[str, list[np.ndarray]]
    feed_counts: dict[str, list[int]]

    def out_mean(self, out: str, use: np.ndarray) -> np.ndarray:
        """Per-channel mean of ``out`` over every position of the feeds ``use`` (a mask over feeds) selects."""
        sums = [s for s, u in zip(self.feed_out_sums[out], use, strict=True) if u]
        n = sum(c for c, u in zip(self.feed_counts[out], use, strict=True) if u)
        return np.sum(sums, axis=0) / max(n, 1)


Transform = Callable[[np.ndarray], np.ndarray]


def targets(proto: onnx.ModelProto, feeds: Sequence[Feed], plan: RowPlan, outs: Sequence[tuple[Layer, str]],
            sums: Sequence[tuple[Layer, str, str, Transform | None]] = (),
            in_rows: Sequence[tuple[Layer, str, str]] = (), optimize: bool = True) -> Targets:
    """One streaming pass over ``feeds`` on ``proto``: for each ``(layer, output)`` in ``outs`` the sampled rows of
    the output at ``plan``'s positions; for each ``(layer, input, output, transform)`` in ``sums`` the per-channel
    output sum and the sums of the input rows (``transform``-ed first, when given) over all positions
    (``Layer.in_means``; no input given: the output sums only); for each ``(layer, input, output)`` in ``in_rows``
    the input rows at the output's sampled positions (``inputs``, under the output's name)."""
    names = list(dict.fromkeys([*(o for _, o in outs), *(i for _, i, _, _ in sums if i), *(o for _, _, o, _ in sums),
                                *(i for _, i, _ in in_rows)]))
    rows: dict[str, list[np.ndarray]] = {o: [] for _, o in outs}
    ins: dict[str, list[np.ndarray]] = {o: [] for _, _, o in in_rows}
    out_sums: dict[str, np.ndarray] = {}
    in_sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    feed_sums: dict[str, list[np.ndarray]] = {o: [] for _, _, o, _ in sums}
    feed_counts: dict[str, list[int]] = {o: [] for _, _, o, _ in sums}
    for f, values in enumerate(capture(proto, feeds, names, optimize=optimize)):
        for lay, o in outs:
            rows[o].append(lay.out_rows(values[o], plan.positions[o][f]))
        for lay, i, o in in_rows:
            ins[o].append(lay.in_rows(values[i], plan.positions[o][f], plan.shapes[o][f]))
        for lay, i, o, fn in sums:
            y = np.asarray(values[o], dtype=np.float64)
            ys = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1]) if lay.op == "Conv" else y.reshape(-1, y.shape[-1])
            out_sums[o] = out_sums.get(o, 0.0) + ys.sum(0)
            feed_sums[o].append(ys.sum(0))
            feed_counts[o].append(len(ys))
            counts[o] = counts.get(o, 0) + len(ys)
            if i:
                s, _ = lay.in_means(values[i] if fn is None else fn(values[i]), y.shape)
                in_sums[o] = in_sums.get(o, 0.0) + s
    return Targets({o: np.concatenate(r) for o, r in rows.items()}, out_sums, in_sums, counts,
                   {o: np.concatenate(r) for o, r in ins.items()}, feed_sums, feed_counts)


@dataclass
class Inputs:
    """One layer's input rows per feed at the sampled positions, and per feed the sum of its input rows over every
    position with the number of positions (``Layer.in_means``)."""

    rows: list[np.ndarray]
    sums: list[np.ndarray]
    counts: list[int]

    def mean(self, use: np.ndarray) -> np.ndarray:
        """The mean input row over every position of the feeds ``use`` selects."""
        n = sum(c for c, u in zip(self.counts, use, strict=True) if u)
        return np.sum([s for s, u in zip(self.sums, use, strict=True) if u], axis=0) / max(n, 1)


def inputs(proto: onnx.ModelProto, feeds: Sequence[Feed], layer: Layer, name: str, out: str, plan: RowPlan,
           optimize: bool = True) -> Inputs:
    """The input rows of ``layer`` (its input tensor ``name``) at ``plan``'s positions of ``out``, per feed, and
    their sums over all positions."""
    got = Inputs([], [], [])
    for f, values in enumerate(capture(proto, feeds, [name], optimize=optimize)):
        got.rows.append(layer.in_rows(values[name], plan.positions[out][f], plan.shapes[out][f]))
        s, n = layer.in_means(values[name], plan.shapes[out][f])
        got.sums.append(s)
        got.counts.append(n)
    return got
