"""ReconstructWeights: re-fit the consumers of pruned channels by least squares on calibration activations."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.analysis.layerwise import Layer, RowPlan, capture, plan_rows, rows_for
from onnxopt.analysis.layerwise import calibration_feeds as calibration_feeds  # re-exported: PruneChannels reads it
from onnxopt.analysis.layerwise import capture_stats as capture_stats  # re-exported: PruneChannels reads it
from onnxopt.analysis.layerwise_solvers import fit_cv, ridge, ridge_grouped
from onnxopt.ir import Model, constant_value, unique_name
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.pass_state import PruneReport
from onnxopt.recovery import PruneState
from onnxopt.tensor_files import tensor_array
from onnxopt.verify import compare_outputs, make_feeds, ort_session

log = logging.getLogger(__name__)


def fidelity(original: onnx.ModelProto, new: onnx.ModelProto, feeds: list[dict[str, np.ndarray]] | None
             ) -> dict[str, float]:
    """Worst cosine and mean top-1 agreement of ``new`` against ``original`` over the feeds.

    Without calibration feeds it measures on generated inputs and says so in the result (``inputs``).
    """
    source = "calibration" if feeds else "generated"
    feeds = feeds or [make_feeds(original, seed=i) for i in range(2)]
    a, b = ort_session(original, optimize=False), ort_session(new, optimize=False)
    names = [o.name for o in a.get_outputs()]
    cos, top = [], []
    for feed in feeds:
        ref = dict(zip(names, a.run(names, feed), strict=True))
        got = dict(zip(names, b.run(names, feed), strict=True))
        for d in compare_outputs(ref, got):
            cos.append(d.cosine)
            if d.top1_agree is not None:
                top.append(d.top1_agree)
    out = {"inputs": source, "cosine_min": round(float(min(cos)), 6)}
    if top:
        out["top1_agree"] = round(float(np.mean(top)), 4)
    return out


@register_pass
class ReconstructWeights(Pass):
    """Least-squares re-fit of each pruned group's consumer so its output matches the unpruned model's.

    Runs after PruneChannels (reads the ``recovery.PruneState`` it hands on), on the layer-wise engine
    (``analysis.layerwise``: sampled rows, streamed captures; ``layerwise_solvers.ridge``). For each Conv (2-D;
    grouped and depthwise ones are fitted group by group, each group's weights and bias from its own input
    channels), Gemm (transA=0,
    alpha=beta=1) or MatMul (constant 2-D right operand) whose input lost channels, in graph order: its inputs are
    taken from the pruned model as re-fitted so far, its targets from the original model's output of the same node,
    and weights plus bias are solved by ridge regression towards the pruned weights, so the removed channels' mean
    contribution lands in the bias; the ridge strength is ``prune_ridge`` or, by default, chosen per layer by the
    error on held-out calibration samples. ``prune_reconstruct``: ``ls`` (default),
    ``bias`` (only fold the removed channels' mean contribution into the bias), ``none``. Declines: no calibration
    data, other consumers (auto_pad, ConvTranspose; MatMul without a bias slot gets weights only).
    """

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        state = ctx.state(PruneState)
        mode = str(ctx.option("prune_reconstruct", "ls")).lower()
        if state is None or mode in ("none", "false", "off", "0"):
            return PassResult(False, {})
        if not state.feeds:
            ctx.decline(self.name, "model", "no calibration data; weights are not re-fitted")
            return PassResult(False, {})
        nodes = {n.name: n for n in model.graph.nodes if n.name}
        todo: list[tuple[gs.Node, Layer]] = []
        for c in state.consumers:
            node = nodes.get(c.node)
            lay = Layer.of(node, constant_value(node.inputs[1]) if len(node.inputs) > 1 else None) \
                if node is not None else "node not found after pruning (unnamed or removed)"
            if isinstance(lay, str):
                ctx.decline(self.name, c.node, lay)
            else:
                todo.append((node, lay))
        if not todo:
            return PassResult(False, {})
        feeds, original = state.feeds, state.original
        order = {id(n): i for i, n in enumerate(model.graph.nodes)}
        todo.sort(key=lambda t: order.get(id(t[0]), 0))  # producers first: each fit sees the re-fitted inputs
        # the positions each fit samples, drawn before any capture (layer by layer, as the fits used to draw them)
        plan = plan_rows(original, feeds, [(lay, n.outputs[0].name) for n, lay in todo] if mode == "ls" else [],
                         lambda lay, n: max(16, rows_for(lay.k + 1) // n), ctx.rng)
        targets = self._targets(original, ctx.progress_bar(feeds, "reconstruct: capturing", unit="sample"), todo,
                                plan, state, mode)
        ridge_alpha = float(ctx.option("prune_ridge")) if ctx.option("prune_ridge") is not None else None
        done = 0
        for node, lay in ctx.progress_bar(todo, "reconstruct: fitting", unit="layer"):
            self._fit(model, node, lay, targets, plan, state, mode, ridge_alpha)
            done += 1
        report = ctx.state(PruneReport)
        if report is not None:
            report.reconstruction = {"mode": mode, "layers": done,
                                     "fidelity": fidelity(original, model.to_onnx(), feeds[:8])}
        return PassResult(done > 0, {"layers_refit": done})

    @staticmethod
    def _targets(original: onnx.ModelProto, feeds, todo: list[tuple[gs.Node, Layer]], plan: RowPlan,
                 state: PruneState, mode: str) -> dict[str, list[np.ndarray]]:
        """One streaming pass over the unpruned model: per consumer output, the sampled target rows of each feed
        (kept channels only) in ``ls`` mode, or per consumer input the per-feed channel means in ``bias`` mode."""
        names = [n.outputs[0].name for n, _ in todo] + [n.inputs[0].name for n, _ in todo]
        got: dict[str, list[np.ndarray]] = {}
        for f, values in enumerate(capture(original, feeds, names)):
            for node, lay in todo:
                xin, yout = node.inputs[0].name, node.outputs[0].name
                if mode == "ls":
                    yt = lay.out_rows(values[yout], plan.positions[yout][f])
                    got.setdefault(yout, []).append(yt[:, state.kept[yout]] if yout in state.kept else yt)
                else:
                    x = np.asarray(values[xin])
                    got.setdefault(xin, []).append(x.mean(axis=(0, 2, 3)) if lay.op == "Conv"
                                                   else x.reshape(-1, x.shape[-1]).mean(0))
        return got

    def _fit(self, model: Model, node: gs.Node, lay: Layer, targets: dict[str, list[np.ndarray]], plan: RowPlan,
             state: PruneState, mode: str, alpha: float | None) -> None:
        if lay.groups > 1:
            if mode == "ls":  # in "bias" mode there is nothing to fold: a group reads only its own channels
                self._fit_grouped(model, node, lay, targets, plan, state, alpha)
            return
        graph = model.graph
        xin, yout = node.inputs[0].name, node.outputs[0].name
        w = constant_value(node.inputs[1]).astype(np.float64)
        has_bias = len(node.inputs) > 2 and node.inputs[2].name
        w2 = lay.matrix(w)[0]                                                   # [K, Co]
        co = lay.cout
        b = constant_value(node.inputs[2]).astype(np.float64).reshape(-1) if has_bias else np.zeros(co)
        b = np.broadcast_to(b, (co,)).copy()
        fit_bias = node.op != "MatMul"
        if mode == "bias":
            b = b + self._mean_fold(node, state, targets[xin], w2) if fit_bias else b
            w_new = w2
        else:
            x = np.concatenate(self._inputs(model, node, lay, plan, state))
            y = np.concatenate(targets[yout])
            held = plan.held(yout)
            if fit_bias:
                x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
                sol = fit_cv(ridge, x, y, np.concatenate([w2, b[None]]), alpha, held)
                w_new, b = sol[:-1], sol[-1]
            else:
                w_new = fit_cv(ridge, x, y, w2, alpha, held)
        w_out = lay.weight(w_new[None])
        node.inputs[1] = gs.Constant(unique_name(graph, f"{node.inputs[1].name}_refit"),
                                     np.ascontiguousarray(w_out.astype(np.float32)))
        if fit_bias:
            bias = gs.Constant(unique_name(graph, f"{node.name}_bias_refit"), b.astype(np.float32))
            if has_bias:
                node.inputs[2] = bias
            else:
                node.inputs.append(bias)

    @staticmethod
    def _inputs(model: Model, node: gs.Node, lay: Layer, plan: RowPlan, state: PruneState) -> list[np.ndarray]:
        """The consumer's input rows per feed, from the pruned model as re-fitted so far."""
        xin, yout = node.inputs[0].name, node.outputs[0].name
        return [lay.in_rows(values[xin], plan.positions[yout][f], plan.shapes[yout][f])
                for f, values in enumerate(capture(model.to_onnx(), state.feeds, [xin]))]

    def _fit_grouped(self, model: Model, node: gs.Node, lay: Layer, targets: dict[str, list[np.ndarray]],
                     plan: RowPlan, state: PruneState, alpha: float | None) -> None:
        """Grouped/depthwise Conv: one ridge fit of weights + bias per group (a group reads only its inputs)."""
        yout = node.outputs[0].name
        w = constant_value(node.inputs[1]).astype(np.float64)                 # [Co, Ci/g, kh, kw]
        g, co, k, cog = lay.groups, lay.cout, lay.k, lay.cg
        has_bias = len(node.inputs) > 2 and node.inputs[2].name
        b = constant_value(node.inputs[2]).astype(np.float64).reshape(-1) if has_bias else np.zeros(co)
        b = np.broadcast_to(b, (co,))
        rows_x = [r.reshape(len(r), g, k) for r in self._inputs(model, node, lay, plan, state)]
        rows_y = [r.reshape(len(r), g, cog) for r in targets[yout]]
        x = np.concatenate(rows_x).astype(np.float64).transpose(1, 0, 2)       # [g, P, k]
        x = np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2)
        y = np.concatenate(rows_y).astype(np.float64).transpose(1, 0, 2)       # [g, P, cog]
        w0 = np.concatenate([w.reshape(g, cog, k).transpose(0, 2, 1), b.reshape(g, 1, cog)], axis=1)
        sol = fit_cv(ridge_grouped, x, y, w0, alpha, plan.held(yout), axis=1)
        graph = model.graph
        w_out = sol[:, :k].transpose(0, 2, 1).reshape(w.shape)
        node.inputs[1] = gs.Constant(unique_name(graph, f"{node.inputs[1].name}_refit"),
                                     np.ascontiguousarray(w_out.astype(np.float32)))
        bias = gs.Constant(unique_name(graph, f"{node.name}_bias_refit"), sol[:, k].reshape(-1).astype(np.float32))
        if has_bias:
            node.inputs[2] = bias
        else:
            node.inputs.append(bias)

    @staticmethod
    def _mean_fold(node: gs.Node, state: PruneState, means_per_feed: list[np.ndarray], w2_pruned: np.ndarray
                   ) -> np.ndarray:
        """Sum over removed input channels of (original weight column) * (mean of that channel)."""
        orig = {n.name: n for n in state.original.graph.node}[node.name]
        inits = {t.name: t for t in state.original.graph.initializer}
        if orig.input[1] not in inits:
            return np.zeros(w2_pruned.shape[1])
        w = tensor_array(inits[orig.input[1]]).astype(np.float64)  # a large model's weight: from its file
        keep = state.kept[node.inputs[0].name]
        if node.op == "Conv":
            per_c = w.sum(axis=(2, 3))                          # [Co, Ci]
        else:
            tb = any(a.name == "transB" and a.i for a in orig.attribute)
            per_c = w if tb else w.T                             # [N, K]
        means = np.mean(means_per_feed, axis=0)
        gone = np.setdiff1d(np.arange(per_c.shape[1]), keep)
        full = per_c[:, gone] @ means[gone]
        out_kept = state.kept.get(node.outputs[0].name)
        return full[out_kept] if out_kept is not None else full
