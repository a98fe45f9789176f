"""EqualizeCrossLayer: rescale channels between consecutive convolutions so per-tensor weight grids fit both."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.analysis.model_capture import calibration_feeds, channel_ranges, read_once
from onnxopt.ir import Model, constant_value, iter_graphs, unique_name
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.quant_scheme import TensorQuant
from onnxopt.recovery import LayerError, recovery_report

from ._qdq import dequantized_weight

log = logging.getLogger(__name__)

HOMOGENEOUS = {"Relu", "PRelu", "LeakyRelu"}  # f(s x) = s f(x) for s > 0
RELU6_MODES = ("auto", "relu", "keep")
SWEEPS, TOLERANCE, S_LIMIT = 20, 1e-4, 1e4


@dataclass
class _Pair:
    a: gs.Node
    act: gs.Node | None
    b: gs.Node
    clip_max: float | None = None  # Clip(0, max) between them (ReLU6), to check or replace


def _const_weight(node: gs.Node) -> np.ndarray | None:
    if node.op != "Conv" or len(node.inputs) < 2 or node.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return None
    w = constant_value(node.inputs[1])
    if w is None or np.asarray(w).ndim != 4 or np.asarray(w).dtype.kind != "f":
        return None
    if len(node.inputs) > 2 and node.inputs[2].name and constant_value(node.inputs[2]) is None:
        return None
    return np.asarray(w)


def _clip_bounds(node: gs.Node) -> tuple[float | None, float | None] | None:
    """(min, max) of a Clip with constant bounds, None where absent; None when a bound is not constant."""
    out: list[float | None] = []
    for i, key in ((1, "min"), (2, "max")):
        if len(node.inputs) > i and node.inputs[i].name:
            v = constant_value(node.inputs[i])
            if v is None:
                return None
            out.append(float(np.asarray(v).reshape(())))
        else:
            out.append(float(node.attrs[key]) if key in node.attrs else None)
    return out[0], out[1]


def find_pairs(graph: gs.Graph, decline) -> list[_Pair]:
    """Conv -> [Relu | PRelu | LeakyRelu | Clip(0, hi)] -> Conv chains where the middle tensor has one reader."""
    pairs = []
    outputs = {id(t) for t in graph.outputs}
    for a in graph.nodes:
        if _const_weight(a) is None or not a.outputs:
            continue
        t = a.outputs[0]
        if id(t) in outputs or len(t.outputs) != 1:
            continue
        act, nxt = None, t.outputs[0]
        clip_max = None
        if nxt.op in HOMOGENEOUS or nxt.op == "Clip":
            act = nxt
            if nxt.op == "PRelu" and constant_value(nxt.inputs[1]) is None:
                decline(a, "PRelu slope is not constant")
                continue
            if nxt.op == "Clip":
                bounds = _clip_bounds(nxt)
                if bounds is None or bounds[0] != 0.0:
                    decline(a, "Clip between the convolutions is not Clip(0, hi) with constant bounds")
                    continue
                clip_max = bounds[1]
            u = nxt.outputs[0]
            if id(u) in outputs or len(u.outputs) != 1:
                continue
            nxt = u.outputs[0]
        if _const_weight(nxt) is None or nxt.inputs[0] is not (act.outputs[0] if act else t):
            continue
        wa, wb = _const_weight(a), _const_weight(nxt)
        gb = int(nxt.attrs.get("group", 1))
        if wb.shape[1] * gb != wa.shape[0]:
            decline(a, "channel counts of the two convolutions do not match")
            continue
        pairs.append(_Pair(a, act, nxt, clip_max))
    depthwise = [p for p in pairs if int(p.a.attrs.get("group", 1)) > 1 or int(p.b.attrs.get("group", 1)) > 1]
    return depthwise + [p for p in pairs if p not in depthwise]  # depthwise-separable blocks first


class _Weights:
    """Current float weights and biases of the convolutions being equalized (written back once at the end)."""

    def __init__(self) -> None:
        self.w: dict[int, np.ndarray] = {}
        self.b: dict[int, np.ndarray] = {}
        self.node: dict[int, gs.Node] = {}
        self.original: dict[int, np.ndarray] = {}
        self.names: dict[int, tuple[str, str]] = {}

    def get(self, node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
        k = id(node)
        if k not in self.w:
            w = _const_weight(node).astype(np.float64)
            self.w[k], self.original[k], self.node[k] = w, w.copy(), node
            self.names[k] = (node.inputs[1].name, node.name)
            bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
            self.b[k] = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64).reshape(-1).copy()
        return self.w[k], self.b[k]


def _in_ranges(wb: np.ndarray, groups: int) -> np.ndarray:
    """max |W| of each input channel of a (grouped) conv: [channels in]."""
    co, cig = wb.shape[:2]
    r = np.abs(wb).reshape(groups, co // groups, cig, -1).max(axis=(1, 3))
    return r.reshape(-1)


def _scale_in(wb: np.ndarray, groups: int, s: np.ndarray) -> np.ndarray:
    co, cig = wb.shape[:2]
    return (wb.reshape(groups, co // groups, cig, *wb.shape[2:]) * s.reshape(groups, 1, cig, 1, 1)).reshape(wb.shape)


def equalize(pairs: list[_Pair], ws: _Weights) -> int:
    """Sweeps over ``pairs`` until no scale moves by more than ``TOLERANCE``; returns the sweeps made."""
    for sweep in range(1, SWEEPS + 1):
        moved = 0.0
        for p in pairs:
            wa, ba = ws.get(p.a)
            wb, _ = ws.get(p.b)
            gb = int(p.b.attrs.get("group", 1))
            r1 = np.abs(wa).reshape(wa.shape[0], -1).max(axis=1)
            r2 = _in_ranges(wb, gb)
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
            s = np.clip(s, 1 / S_LIMIT, S_LIMIT)
            wa /= s[:, None, None, None]
            ba /= s
            ws.w[id(p.b)] = _scale_in(wb, gb, s)
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
        if moved < TOLERANCE:
            return sweep
    return SWEEPS


@register_pass
class EqualizeCrossLayer(Pass):
    """Cross-layer equalization (Nagel et al. 2019) of Conv -> [Relu | PRelu | LeakyRelu | ReLU6] -> Conv chains.

    Runs on the float model, before quantization. For each pair whose middle tensor has one reader (depthwise-
    separable blocks first), output channel c of the first conv is divided by ``s_c = sqrt(r1_c / r2_c)`` and input
    channel c of the second multiplied by it (``r``: the channel's largest |weight|), so both ranges become
    ``sqrt(r1_c r2_c)``; chains of three and more are swept until the scales settle. Exact for Relu, PRelu,
    LeakyRelu and no activation (positively homogeneous). ReLU6 (``Clip(0, hi)``) is not: ``cle_relu6`` = ``auto``
    (default) replaces it by Relu only where the calibration data never reach ``hi`` before it (exact on those
    data), ``relu`` always (as AIMET does; lossy where it clipped), ``keep`` never equalizes across it.

    Bias absorption (``cle_absorb``, default on; needs calibration data): across a Relu into a conv without padding,
    the part ``c = max(0, min over the calibration data)`` of each channel that the Relu never cuts moves from the
    first conv's bias to the second's (``b2 += W2 c``), which shrinks the middle tensor's range; exact on data at or
    above the minimum.

    Rewrites: new weight and bias initializers of both convs (a bias is added where none was), Relu in place of
    Clip(0, hi) where ``cle_relu6`` says. Records per layer the weight quantization error in ``weights`` (the
    format the recipe passes, per tensor by default; the mean over output channels of each one's relative squared
    error: per-tensor grids lose the small channels) before and after (``recovery.RecoveryReport``).
    Declines: Clip with non-constant bounds or a non-zero minimum, PRelu with a non-constant slope, channel counts
    that do not match; ReLU6 that clips on calibration data (``auto``), or without data to tell; the absorption
    into a padded conv (borders would change) or without data. Convs whose output has several readers or is a
    graph output, and non-2-D / auto_pad convs, are not paired.
    """

    lossless = False

    def __init__(self, weights: TensorQuant | None = None) -> None:
        self.weights = weights or TensorQuant(dtype="int8", symmetric=True, per_channel=False)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        start = time.perf_counter()
        relu6 = str(ctx.option("cle_relu6") or "auto")
        if relu6 not in RELU6_MODES:
            from onnxopt.errors import UserError

            raise UserError(f"cle_relu6 {relu6!r}: choose one of {', '.join(RELU6_MODES)}")

        def decline(node: gs.Node, reason: str) -> None:
            ctx.decline(self.name, f"Conv '{node.name}'", reason)

        pairs: list[_Pair] = []
        main = {id(n) for n in model.graph.nodes}
        for g in iter_graphs(model.graph):
            pairs += find_pairs(g, decline)
        clipped = [p for p in pairs if p.clip_max is not None]
        feeds = None
        if (clipped and relu6 == "auto" or bool(ctx.option("cle_absorb", True))) and not read_once(ctx):
            feeds = calibration_feeds(model.to_onnx(), ctx, int(ctx.option("recover_samples") or 32))
        if clipped and relu6 != "relu":
            highs = self._ranges(model, feeds, [p for p in clipped if id(p.a) in main]) if relu6 == "auto" else {}
            keep = []
            for p in pairs:
                hi = highs.get(p.a.outputs[0].name)
                if p.clip_max is None or (hi is not None and float(hi.high.max()) <= p.clip_max):
                    keep.append(p)
                else:
                    decline(p.a, "ReLU6 clips on the calibration data (or there are none to tell): not equalized"
                            if relu6 == "auto" else "cle_relu6 keep: not equalized across ReLU6")
            pairs = keep
        if not pairs:
            return PassResult(False, {})
        ws = _Weights()
        sweeps = equalize(pairs, ws)
        for p in pairs:
            if p.clip_max is not None:  # exact on the calibration data (auto) or asked for (relu)
                p.act.op = "Relu"
                while len(p.act.inputs) > 1:
                    p.act.inputs.pop()
                p.act.attrs.clear()
        absorbed = self._absorb(model, pairs, ws, feeds, main, decline) if ctx.option("cle_absorb", True) else 0
        self._write(model, ws, ctx)
        summary = recovery_report(ctx).step("cle")
        summary.layers += len(ws.w)
        summary.seconds += time.perf_counter() - start
        summary.detail.update({"pairs": len(pairs), "sweeps": sweeps, "biases_absorbed": absorbed,
                               "relu6_as_relu": sum(p.clip_max is not None for p in pairs)})
        return PassResult(True, {"pairs_equalized": len(pairs), "biases_absorbed": absorbed})

    @staticmethod
    def _ranges(model: Model, feeds, pairs: list[_Pair]):
        if not feeds or not pairs:
            return {}
        return channel_ranges(model.to_onnx(), feeds, [p.a.outputs[0].name for p in pairs])

    def _absorb(self, model: Model, pairs: list[_Pair], ws: _Weights, feeds, main: set[int], decline) -> int:
        cand = []
        for p in pairs:
            if p.act is None or p.act.op != "Relu":
                continue
            if any(int(v) for v in p.b.attrs.get("pads", [0, 0, 0, 0])):
                decline(p.b, "bias not absorbed into a padded conv (its borders would change)")
            elif id(p.a) not in main or not feeds:
                decline(p.a, "bias absorption needs calibration data of the main graph")
            else:
                cand.append(p)
        if not cand:
            return 0
        self._write(model, ws, None)  # measure the equalized model
        lows = channel_ranges(model.to_onnx(), feeds, [p.a.outputs[0].name for p in cand])
        n = 0
        for p in cand:
            c = np.maximum(lows[p.a.outputs[0].name].low, 0.0)
            if not np.any(c > 0):
                continue
            _, ba = ws.get(p.a)
            wb, bb = ws.get(p.b)
            gb = int(p.b.attrs.get("group", 1))
            ba -= c
            bb += _scale_in(wb, gb, c).reshape(wb.shape[0], -1).sum(axis=1)
            n += 1
        return n

    def _write(self, model: Model, ws: _Weights, ctx: PassContext | None) -> None:
        graph = model.graph
        for k, w in ws.w.items():
            node = ws.node[k]
            wname, nname = ws.names[k]
            node.inputs[1] = gs.Constant(unique_name(graph, f"{wname}_equalized"), w.astype(np.float32))
            bias = gs.Constant(unique_name(graph, f"{nname}_bias_equalized"), ws.b[k].astype(np.float32))
            if len(node.inputs) > 2:
                node.inputs[2] = bias
            else:
                node.inputs.append(bias)
            if ctx is not None:
                recovery_report(ctx).add(LayerError(node.name, "cle", self._werr(ws.original[k]), self._werr(w),
                                                    "weights"))

    def _werr(self, w: np.ndarray) -> float:
        q = self.weights
        deq = dequantized_weight(w, q, 0 if q.per_channel else None, np.float64)
        err = ((deq - w) ** 2).reshape(len(w), -1).sum(1)
        return float(np.mean(err / np.maximum((w * w).reshape(len(w), -1).sum(1), 1e-30)))

