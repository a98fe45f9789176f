"""SmoothActivations: move per-channel activation range into the weights of the MatMul/Gemm that read it.

SmoothQuant (Xiao et al. 2023): int8 activations quantized per tensor lose the small channels when a few channels
carry outliers (transformer LayerNorm and GELU outputs). Dividing channel k of the activation by ``s_k`` and
multiplying row k of every weight that reads it by ``s_k`` computes the same function and flattens the activation's
channel ranges, at the price of wider weight rows; per-channel weights absorb that well.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.analysis.model_capture import calibration_feeds, capture, read_once
from onnxopt.ir import DEFAULT_DOMAINS, Model, constant_value, iter_graphs, unique_name
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.quant_scheme import QuantScheme, TensorQuant
from onnxopt.recovery import LayerError, recovery_report

from ._qdq import dequantized_activation, dequantized_weight
from .quantize_dynamic import DYNAMIC_ACTIVATIONS, dynamic_weight_quant

log = logging.getLogger(__name__)

ALPHAS = (0.3, 0.5, 0.7, 0.85)  # migration strength: 0 leaves the activation, 1 moves all its range to the weights
MIN_GAIN = 0.05  # an alpha must lower the simulated error by 5% to be used
MAX_ROWS = 2048  # activation rows (tokens) per sample group kept for the simulation
S_LIMIT = 1e4


@dataclass
class _Group:
    """An activation tensor and its readers that can absorb the smoothing (MatMul/Gemm with constant weights)."""

    tensor: gs.Variable
    readers: list[gs.Node]
    weights: list[np.ndarray]  # as [K, N] (Gemm transB undone)


def _reader_weight(node: gs.Node, tensor: gs.Tensor) -> tuple[np.ndarray | None, str]:
    """The [K, N] weight when ``node`` reads ``tensor`` as its activation (first input), else why not."""
    if node.domain not in (None, *DEFAULT_DOMAINS) or node.op not in ("MatMul", "Gemm"):
        return None, f"read by {node.op}"
    if len(node.inputs) < 2 or node.inputs[0] is not tensor or node.inputs[1] is tensor:
        return None, f"{node.op} '{node.name}' reads it as its weight"
    w = constant_value(node.inputs[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None, f"{node.op} '{node.name}' has no constant 2-D float32 weight"
    if node.op == "Gemm":
        if int(node.attrs.get("transA", 0)) or float(node.attrs.get("alpha", 1.0)) != 1.0:
            return None, f"Gemm '{node.name}' with transA or alpha"
        return (w.T if int(node.attrs.get("transB", 0)) else w), ""
    return w, ""


def find_groups(graph: gs.Graph, decline: Callable[[str, str], None]) -> list[_Group]:
    """Every activation read by MatMul/Gemm weights layers, with those readers (main graph only)."""
    groups: dict[int, _Group] = {}
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm") or not node.inputs:
            continue
        a = node.inputs[0]
        if id(a) in groups or constant_value(a) is not None:
            continue
        readers, weights = [], []
        for user in a.outputs:
            w, why = _reader_weight(user, a)
            if w is not None:
                readers.append(user)
                weights.append(w)
            elif user.op in ("MatMul", "Gemm"):
                decline(a.name, why)
        if len({w.shape[0] for w in weights}) > 1:
            decline(a.name, "its readers' weights differ in K")
        elif readers:
            groups[id(a)] = _Group(a, readers, weights)
    return list(groups.values())


def decline_subgraphs(graph: gs.Graph, decline: Callable[[str, str], None]) -> None:
    """Weighted MatMul/Gemm inside If/Loop/Scan bodies: not smoothed (calibration captures the main graph only)."""
    for sub in list(iter_graphs(graph))[1:]:
        for node in sub.nodes:
            if node.op in ("MatMul", "Gemm") and len(node.inputs) > 1 and constant_value(node.inputs[1]) is not None:
                decline(node.inputs[0].name, f"read by {node.op} '{node.name}' in a subgraph: calibration captures "
                        "the main graph only")


class _Simulation:
    """The group's output error (sum (q - f)^2 / sum f^2 over its readers) with activations and weights quantized
    as the scheme does, for a given smoothing vector."""

    def __init__(self, samples: list[np.ndarray], weights: list[np.ndarray], scheme: QuantScheme, dynamic: bool):
        self.samples, self.weights, self.dynamic = samples, weights, dynamic
        # as the quantizer will: QuantizeDynamic's weights and DynamicQuantizeLinear's uint8 range per sample, or
        # the scheme's weights and activations over the calibrated range
        self.wq: TensorQuant = dynamic_weight_quant(scheme) if dynamic else scheme.weights
        self.aq: TensorQuant = DYNAMIC_ACTIVATIONS if dynamic else scheme.activations
        self.refs = [[x @ w for w in weights] for x in samples]
        self.total = sum(float(np.sum(r * r)) for rs in self.refs for r in rs)

    def error(self, s: np.ndarray) -> float:
        axis = 1 if self.wq.per_channel else None
        wq = [dequantized_weight(w * s[:, None], self.wq, axis) for w in self.weights]
        scaled = [x / s for x in self.samples]
        lo, hi = min(float(x.min()) for x in scaled), max(float(x.max()) for x in scaled)
        err = 0.0
        for x, refs in zip(scaled, self.refs, strict=True):
            xq = dequantized_activation(x, *((float(x.min()), float(x.max())) if self.dynamic else (lo, hi)), self.aq)
            err += sum(float(np.sum((xq @ w - r) ** 2)) for w, r in zip(wq, refs, strict=True))
        return err / max(self.total, 1e-30)


def smoothing_vector(amax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """s_k = max|A_k|^alpha / max_j |W_kj|^(1 - alpha) over the group's weights, 1 where a side is all zero."""
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0).astype(np.float64)
    s = np.ones_like(wmax)
    ok = (amax > 0) & (wmax > 0)
    s[ok] = amax[ok] ** alpha / wmax[ok] ** (1.0 - alpha)
    return np.clip(s, 1.0 / S_LIMIT, S_LIMIT)


@register_pass
class SmoothActivations(Pass):
    """SmoothQuant's channel smoothing of MatMul/Gemm activations, alpha chosen per activation on calibration data.

    Runs on the float model, before quantization. For each activation tensor A read by MatMul / Gemm nodes with
    constant 2-D float32 weights (the group: all such readers of A), ``Mul(A, 1/s)`` is inserted and every reader
    reads it, with weight rows multiplied by ``s`` (A's other readers, e.g. a residual Add, still read A). ``s`` is
    SmoothQuant's ``max|A_k|^alpha / max|W_k|^(1-alpha)``; alpha is picked per group from (0.3, 0.5, 0.7, 0.85) by
    the group's simulated int8 output error on the calibration samples (activations per tensor, uint8 asymmetric,
    per sample when the activations are quantized at run time (``dynamic``), else over the calibrated range;
    weights in the scheme's grid); a group is left as it is unless some alpha lowers that error by 5% or more.
    Exact in real arithmetic (float results move by rounding). Per group, the simulated error before and after
    goes to the recovery report (step ``smooth``).

    ``quantized_as(model, has_data)``: the target's rule for how this model's activations will be quantized:
    ``"dynamic"``, ``"static"``, or None to leave the model alone (the default recipe smooths only what it
    quantizes dynamically); not given: dynamic.
    Declines (each logged): no calibration data (or data that can be read once only); weighted MatMul/Gemm in
    If/Loop/Scan bodies (calibration captures the main graph only); readers with transposed A, alpha != 1,
    non-constant or non-float32 weights (the others of the group are still smoothed; these read A as before);
    readers whose K differ; activations where no alpha helps (kept as they are, reported).
    """

    lossless = False

    def __init__(self, scheme: QuantScheme, quantized_as: Callable[[Model, bool], str | None] | None = None) -> None:
        self.scheme, self.quantized_as = scheme, quantized_as

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        start = time.perf_counter()
        has_data = (ctx.calibration is not None or ctx.option("calibration") is not None) and not read_once(ctx)
        mode = self.quantized_as(model, has_data) if self.quantized_as is not None else "dynamic"
        if mode not in ("dynamic", "static"):
            return PassResult(False, {})
        if not has_data:
            ctx.decline(self.name, "model", "no calibration data that can be read again: nothing smoothed")
            return PassResult(False, {})

        def decline(where: str, reason: str) -> None:
            ctx.decline(self.name, f"tensor '{where}'", reason)

        decline_subgraphs(model.graph, decline)
        groups = find_groups(model.graph, decline)
        if not groups:
            return PassResult(False, {})
        proto = model.to_onnx()
        feeds = calibration_feeds(proto, ctx, int(ctx.option("recover_samples") or 32))
        if not feeds:
            return PassResult(False, {})
        samples: dict[str, list[np.ndarray]] = {g.tensor.name: [] for g in groups}
        for values in ctx.progress_bar(capture(proto, feeds, list(samples)), desc="smooth: capture",
                                       total=len(feeds)):
            for name, v in values.items():
                rows = np.asarray(v, np.float32).reshape(-1, v.shape[-1])
                samples[name].append(rows[:MAX_ROWS])
        smoothed = 0
        report = recovery_report(ctx)
        for g in ctx.progress_bar(groups, desc="smooth: groups"):
            xs = samples[g.tensor.name]
            if not xs or xs[0].shape[1] != g.weights[0].shape[0]:
                decline(g.tensor.name, "its last axis is not the weights' K")
                continue
            sim = _Simulation(xs, g.weights, self.scheme, dynamic=mode == "dynamic")
            amax = np.max([np.abs(x).max(axis=0) for x in xs], axis=0).astype(np.float64)
            base = sim.error(np.ones(xs[0].shape[1]))
            trials = {a: smoothing_vector(amax, g.weights, a) for a in ALPHAS}
            errors = {a: sim.error(s) for a, s in trials.items()}
            alpha = min(errors, key=errors.get)
            if errors[alpha] > base * (1.0 - MIN_GAIN):
                report.add(LayerError(g.tensor.name, "smooth", base, base, "float", "no alpha helps: kept"))
                continue
            self._apply(model.graph, g, trials[alpha].astype(np.float32))
            report.add(LayerError(g.tensor.name, "smooth", base, errors[alpha], "float",
                                  f"alpha {alpha}, {len(g.readers)} readers"))
            smoothed += 1
        summary = report.step("smooth")
        summary.layers += smoothed
        summary.declined += len(groups) - smoothed
        summary.seconds += time.perf_counter() - start
        if smoothed:
            model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(bool(smoothed), {"activations_smoothed": smoothed, "groups": len(groups)})

    @staticmethod
    def _apply(graph: gs.Graph, g: _Group, s: np.ndarray) -> None:
        a = g.tensor
        inv = gs.Constant(unique_name(graph, f"{a.name}_smooth_inv"), (1.0 / s).astype(np.float32))
        out = gs.Variable(unique_name(graph, f"{a.name}_smoothed"), dtype=a.dtype, shape=a.shape)
        graph.nodes.append(gs.Node("Mul", name=unique_name(graph, f"{a.name}_smooth"), inputs=[a, inv],
                                   outputs=[out]))
        for node, w in zip(g.readers, g.weights, strict=True):
            new_w = (w * s[:, None]).astype(np.float32)
            if node.op == "Gemm" and int(node.attrs.get("transB", 0)):
                new_w = np.ascontiguousarray(new_w.T)
            node.inputs[1] = gs.Constant(unique_name(graph, f"{node.inputs[1].name}_smoothed"), new_w)
            node.inputs[0] = out
