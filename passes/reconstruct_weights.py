"""ReconstructWeights: re-fit the consumers of pruned channels by least squares on calibration activations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from tqdm import tqdm

from onnxopt.ir import Model, constant_value, unique_name
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.verify import compare_outputs, make_feeds, ort_session

log = logging.getLogger(__name__)


def calibration_feeds(proto: onnx.ModelProto, ctx: PassContext, limit: int) -> list[dict[str, np.ndarray]] | None:
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


def _with_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
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


def capture(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], names: list[str]
            ) -> Iterator[dict[str, np.ndarray]]:
    """Yield, per feed, ``{name: value}`` of the chosen intermediate tensors (onnxruntime; tensors asked for are
    graph outputs, which its graph optimizations keep)."""
    sess = ort_session(_with_outputs(proto, names))
    known = {i.name for i in sess.get_inputs()}
    for feed in feeds:
        yield dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in known}), strict=True))


def capture_stats(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], axes: dict[str, int]
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


def _patches(x: np.ndarray, node: gs.Node, w: np.ndarray, pos: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Rows of im2col(x) at flattened output positions ``pos`` (over n, oh, ow): [P, C*kh*kw]."""
    kh, kw = w.shape[2:]
    sh, sw = node.attrs.get("strides", [1, 1])
    dh, dw = node.attrs.get("dilations", [1, 1])
    pads = node.attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, rem = np.divmod(pos, out_hw[0] * out_hw[1])
    oh, ow = np.divmod(rem, out_hw[1])
    rows = oh[:, None] * sh + np.arange(kh)[None] * dh
    cols = ow[:, None] * sw + np.arange(kw)[None] * dw
    p = xp[n[:, None, None, None], np.arange(x.shape[1])[None, :, None, None], rows[:, None, :, None],
           cols[:, None, None, :]]
    return p.reshape(len(pos), -1)


ROWS_PER_UNKNOWN, MIN_ROWS, MAX_ROWS = 8, 2048, 16384


def _rows(unknowns: int) -> int:
    """Sampled positions for a fit with ``unknowns`` weights per output: a few times more rows than unknowns, so the
    fit generalizes beyond the calibration data instead of interpolating it."""
    return int(min(MAX_ROWS, max(MIN_ROWS, ROWS_PER_UNKNOWN * unknowns)))


def _ridge(x: np.ndarray, y: np.ndarray, w0: np.ndarray, alpha: float) -> np.ndarray:
    """argmin ||y - x w||^2 + lam ||w - w0||^2 with lam = alpha * mean diag(x'x); primal or dual form."""
    x, y, w0 = x.astype(np.float64), y.astype(np.float64), w0.astype(np.float64)
    r, k = x.shape
    resid = y - x @ w0
    lam = alpha * float(np.einsum("ij,ij->", x, x)) / max(k, 1) + 1e-8
    if k <= r:
        return w0 + np.linalg.solve(x.T @ x + lam * np.eye(k), x.T @ resid)
    return w0 + x.T @ np.linalg.solve(x @ x.T + lam * np.eye(r), resid)


ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _ridge_grouped(x: np.ndarray, y: np.ndarray, w0: np.ndarray, alpha: float) -> np.ndarray:
    """``_ridge`` for a batch of independent fits: x [g, P, k], y [g, P, c], w0 [g, k, c] (primal form)."""
    xt = x.transpose(0, 2, 1)
    xtx = xt @ x                                                     # batched BLAS: einsum was 10x slower here
    lam = alpha * np.trace(xtx, axis1=1, axis2=2) / x.shape[2] + 1e-8
    rhs = xt @ (y - x @ w0)
    return w0 + np.linalg.solve(xtx + lam[:, None, None] * np.eye(x.shape[2]), rhs)


def _fit_cv(solve, x: np.ndarray, y: np.ndarray, w0: np.ndarray, alpha: float | None, held: np.ndarray,
            axis: int = 0) -> np.ndarray:
    """``solve(x, y, w0, alpha)`` with ``alpha`` given, or chosen from ``ALPHAS`` by the error on the ``held`` rows
    (whole calibration samples, along ``axis``) of a fit on the others, then refitted on all rows. Deep layers see
    few distinct positions (7x7 per sample) for up to a thousand weights per output: a fixed small ridge interpolates
    the calibration data there and generalizes worse than the pruned weights did."""
    if alpha is None and 0 < held.sum() < len(held):
        xt, yt = np.compress(~held, x, axis), np.compress(~held, y, axis)
        xh, yh = np.compress(held, x, axis), np.compress(held, y, axis)

        def err(a: float) -> float:
            sol = solve(xt, yt, w0, a)
            return float(np.sum((yh - (xh @ sol)) ** 2))

        alpha = min(ALPHAS, key=err)
    return solve(x, y, w0, 0.01 if alpha is None else alpha)


@register_pass
class ReconstructWeights(Pass):
    """Least-squares re-fit of each pruned group's consumer so its output matches the unpruned model's.

    Runs after PruneChannels (reads ``ctx.cache["prune_state"]``). For each Conv (2-D; grouped and depthwise ones
    are fitted group by group, each group's weights and bias from its own input channels), Gemm (transA=0,
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
        state = ctx.cache.get("prune_state")
        mode = str(ctx.option("prune_reconstruct", "ls")).lower()
        if not state or mode in ("none", "false", "off", "0"):
            return PassResult(False, {})
        if not state["feeds"]:
            ctx.decline(self.name, "model", "no calibration data; weights are not re-fitted")
            return PassResult(False, {})
        nodes = {n.name: n for n in model.graph.nodes if n.name}
        todo = []
        for c in state["consumers"]:
            node = nodes.get(c["node"])
            reason = self._check(node)
            if reason:
                ctx.decline(self.name, c["node"], reason)
            else:
                todo.append(node)
        if not todo:
            return PassResult(False, {})
        feeds, original = state["feeds"], state["original"]
        targets = {}
        for values in capture(original, feeds, [n.outputs[0].name for n in todo] + [n.inputs[0].name for n in todo]):
            for k, v in values.items():
                targets.setdefault(k, []).append(v)
        order = {id(n): i for i, n in enumerate(model.graph.nodes)}
        todo.sort(key=lambda n: order.get(id(n), 0))  # producers first: each fit sees the re-fitted inputs
        ridge = float(ctx.option("prune_ridge")) if ctx.option("prune_ridge") is not None else None
        done = 0
        for node in tqdm(todo, desc="reconstruct", unit="layer", disable=not ctx.progress, leave=False):
            self._fit(model, node, targets, state, mode, ridge, ctx.rng)
            done += 1
        report = ctx.cache.get("prune_report")
        if report is not None:
            report["reconstruction"] = {"mode": mode, "layers": done,
                                        "fidelity": fidelity(original, model.to_onnx(), feeds[:8])}
        return PassResult(done > 0, {"layers_refit": done})

    @staticmethod
    def _check(node: gs.Node | None) -> str | None:
        if node is None:
            return "node not found after pruning (unnamed or removed)"
        w = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is None:
            return "weights are not constant"
        if node.op == "Conv":
            if w.ndim != 4 or node.attrs.get("auto_pad", "NOTSET") != "NOTSET":
                return "only 2-D Conv with explicit pads is re-fitted"
        elif node.op == "Gemm":
            if node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0:
                return "Gemm with transA/alpha/beta is not re-fitted"
        elif node.op != "MatMul" or w.ndim != 2:
            return f"{node.op} is not re-fitted"
        return None

    def _fit(self, model: Model, node: gs.Node, targets: dict, state: dict, mode: str, alpha: float | None,
             rng: np.random.Generator) -> None:
        if node.op == "Conv" and int(node.attrs.get("group", 1)) > 1:
            if mode == "ls":  # in "bias" mode there is nothing to fold: a group reads only its own channels
                self._fit_grouped(model, node, targets, state, alpha, rng)
            return
        graph, kept = model.graph, state["kept"]
        xin, yout = node.inputs[0].name, node.outputs[0].name
        w = constant_value(node.inputs[1]).astype(np.float64)
        has_bias = len(node.inputs) > 2 and node.inputs[2].name
        if node.op == "Conv":
            co = w.shape[0]
            w2 = w.reshape(co, -1).T                                           # [K, Co]
        else:
            w2 = w.T if node.op == "Gemm" and node.attrs.get("transB", 0) else w  # [K, N]
            co = w2.shape[1]
        b = constant_value(node.inputs[2]).astype(np.float64).reshape(-1) if has_bias else np.zeros(co)
        b = np.broadcast_to(b, (co,)).copy()
        fit_bias = node.op != "MatMul"
        xs_orig, ys = targets[xin], targets[yout]
        if mode == "bias":
            b = b + self._mean_fold(node, state, xs_orig, w2) if fit_bias else b
            w_new = w2
        else:
            live = list(capture(model.to_onnx(), state["feeds"], [xin]))
            rows_x, rows_y, held = [], [], []
            per_feed = max(16, _rows(w2.shape[0] + 1) // len(ys))
            for i, (values, y) in enumerate(zip(live, ys, strict=True)):
                x = values[xin]
                if node.op == "Conv":
                    y = np.asarray(y)
                    total = y.shape[0] * y.shape[2] * y.shape[3]
                    pos = np.sort(rng.choice(total, size=min(per_feed, total), replace=False))
                    rows_x.append(_patches(x, node, w, pos, y.shape[2:]))
                    yt = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])[pos]
                else:
                    x2, yt = x.reshape(-1, x.shape[-1]), np.asarray(y).reshape(-1, np.asarray(y).shape[-1])
                    pos = np.sort(rng.choice(len(x2), size=min(per_feed, len(x2)), replace=False))
                    rows_x.append(x2[pos])
                    yt = yt[pos]
                rows_y.append(yt[:, kept[yout]] if yout in kept else yt)
                held.append(np.full(len(pos), i % 4 == 3))
            x = np.concatenate(rows_x)
            y = np.concatenate(rows_y)
            if fit_bias:
                x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
                sol = _fit_cv(_ridge, x, y, np.concatenate([w2, b[None]]), alpha, np.concatenate(held))
                w_new, b = sol[:-1], sol[-1]
            else:
                w_new = _fit_cv(_ridge, x, y, w2, alpha, np.concatenate(held))
        if node.op == "Conv":
            w_out = w_new.T.reshape(w.shape)
        else:
            w_out = w_new.T if node.op == "Gemm" and node.attrs.get("transB", 0) else w_new
        node.inputs[1] = gs.Constant(unique_name(graph, f"{node.inputs[1].name}_refit"),
                                     np.ascontiguousarray(w_out.astype(np.float32)))
        if fit_bias:
            bias = gs.Constant(unique_name(graph, f"{node.name}_bias_refit"), b.astype(np.float32))
            if has_bias:
                node.inputs[2] = bias
            else:
                node.inputs.append(bias)

    @staticmethod
    def _fit_grouped(model: Model, node: gs.Node, targets: dict, state: dict, alpha: float | None,
                     rng: np.random.Generator) -> None:
        """Grouped/depthwise Conv: one ridge fit of weights + bias per group (a group reads only its inputs)."""
        xin, yout = node.inputs[0].name, node.outputs[0].name
        w = constant_value(node.inputs[1]).astype(np.float64)                 # [Co, Ci/g, kh, kw]
        g = int(node.attrs["group"])
        co, k = w.shape[0], int(np.prod(w.shape[1:]))
        cog = co // g
        has_bias = len(node.inputs) > 2 and node.inputs[2].name
        b = constant_value(node.inputs[2]).astype(np.float64).reshape(-1) if has_bias else np.zeros(co)
        b = np.broadcast_to(b, (co,))
        ys = targets[yout]
        per_feed = max(16, _rows(k + 1) // len(ys))
        rows_x, rows_y, held = [], [], []
        for i, (values, y) in enumerate(zip(capture(model.to_onnx(), state["feeds"], [xin]), ys, strict=True)):
            y = np.asarray(y)
            total = y.shape[0] * y.shape[2] * y.shape[3]
            pos = np.sort(rng.choice(total, size=min(per_feed, total), replace=False))
            rows_x.append(_patches(values[xin], node, w, pos, y.shape[2:]).reshape(len(pos), g, k))
            yt = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])[pos]
            rows_y.append((yt[:, state["kept"][yout]] if yout in state["kept"] else yt).reshape(len(pos), g, cog))
            held.append(np.full(len(pos), i % 4 == 3))
        x = np.concatenate(rows_x).astype(np.float64).transpose(1, 0, 2)       # [g, P, k]
        x = np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2)
        y = np.concatenate(rows_y).astype(np.float64).transpose(1, 0, 2)       # [g, P, cog]
        w0 = np.concatenate([w.reshape(g, cog, k).transpose(0, 2, 1), b.reshape(g, 1, cog)], axis=1)
        sol = _fit_cv(_ridge_grouped, x, y, w0, alpha, np.concatenate(held), axis=1)
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
    def _mean_fold(node: gs.Node, state: dict, xs_orig: list, w2_pruned: np.ndarray) -> np.ndarray:
        """Sum over removed input channels of (original weight column) * (mean of that channel)."""
        orig = {n.name: n for n in state["original"].graph.node}[node.name]
        inits = {t.name: t for t in state["original"].graph.initializer}
        if orig.input[1] not in inits:
            return np.zeros(w2_pruned.shape[1])
        w = onnx.numpy_helper.to_array(inits[orig.input[1]]).astype(np.float64)
        keep = state["kept"][node.inputs[0].name]
        if node.op == "Conv":
            per_c = w.sum(axis=(2, 3))                          # [Co, Ci]
            means = np.mean([np.asarray(x).mean(axis=(0, 2, 3)) for x in xs_orig], axis=0)
        else:
            tb = any(a.name == "transB" and a.i for a in orig.attribute)
            per_c = w if tb else w.T                             # [N, K]
            means = np.mean([np.asarray(x).reshape(-1, np.asarray(x).shape[-1]).mean(0) for x in xs_orig], axis=0)
        gone = np.setdiff1d(np.arange(per_c.shape[1]), keep)
        full = per_c[:, gone] @ means[gone]
        out_kept = state["kept"].get(node.outputs[0].name)
        return full[out_kept] if out_kept is not None else full
