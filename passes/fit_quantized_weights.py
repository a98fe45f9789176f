"""FitQuantizedWeights: layer-wise fitting of quantized weights (clipping scales, then rounding) to the float model."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import onnx

from onnxopt.analysis.layerwise import Layer, held_out, inputs, output_error, plan_rows, rows_for, targets
from onnxopt.analysis.layerwise_capture import InputCapture
from onnxopt.analysis.layerwise_solvers import (
    AdaRoundConfig,
    Objective,
    Quadratic,
    SoftmaxKL,
    adaround,
    search_scales,
)
from onnxopt.ir import Model
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.recovery import LayerError, float_reference, recovery_report
from onnxopt.tensor_files import tensor_array

from ._qdq_layers import QuantizedLayer, float_weights, quantized_layers, scheme_of, write_bias, write_weight

log = logging.getLogger(__name__)

HEAD_PASS_THROUGH = {"Softmax", "Flatten", "Reshape", "Identity", "Squeeze"}


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)


def classifier_head(proto: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Whether ``node`` (Gemm/MatMul) is a classifier's last layer: its output reaches a graph output through
    Softmax/Flatten/Reshape/Identity/Squeeze only, and a Softmax is on the way or the output is the logits."""
    if node.op_type not in ("Gemm", "MatMul"):
        return False
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in proto.graph.output}
    t = node.output[0]
    for _ in range(8):
        if t in outputs:
            return True
        nxt = readers.get(t, [])
        if len(nxt) != 1 or nxt[0].op_type not in HEAD_PASS_THROUGH:
            return False
        t = nxt[0].output[0]
    return False


@register_pass
class FitQuantizedWeights(Pass):
    """Fit each quantized weight to the float model's activations: clipping scale (SeqMSE), then rounding (AdaRound).

    Runs after Q/DQ insertion; reads the ``recovery.FloatReference`` that KeepFloatReference recorded before
    quantization. For each Conv (2-D, grouped and depthwise ones group by group), Gemm and MatMul whose weight is a
    DequantizeLinear of constant integers, in graph order: the layer's input rows come from the quantized model with
    the layers before it already fitted (onnxruntime, Q/DQ in float; computed from the inputs captured for the
    layers before, ``layerwise_capture.InputCapture``, unless ``fit_incremental`` is False: the same values), its
    targets from the float model's output of the same node, at the same sampled positions; then

    - ``fit_scales`` (default on, symmetric weights): the clipping scale, per output channel when the weight is
      per channel, else per tensor, chosen from 0.5..1 x the current scale by the output error with nearest rounding;
    - ``fit_rounding`` (default on): AdaRound learns up or down per weight on that grid (``fit_iterations``, at most
      500, at least 100, fewer where ``fit_budget``, 3e10 multiply-adds per layer, runs out);
    - ``fit_bias`` (default on; Conv and Gemm): the bias is fitted with the weights (AdaQuant): the weights fit
      the rows centred on their means, the bias takes the mean output shift that remains, which carries the error
      reaching the layer from the layers before it;
    - objective (``fit_objective``): ``mse`` (default), the squared output error; ``auto``: for a classifier's
      last Gemm/MatMul (``classifier_head``) the KL divergence between temperature-softened (``fit_temperature``,
      default 4) float and quantized outputs, blind to a shift of all logits (measured: with 16-32 calibration
      samples it fitted that layer worse than ``mse`` did, judged on logits); ``kl``: KL wherever a layer has one
      group;
    - a layer with fewer training rows than ``fit_min_rows`` (default 1) x its weights per output channel (one
      row per sample after a global pooling: squeeze-excite convs, classifier heads) gets its bias fitted only;
      scales and rounding would interpolate the calibration samples (measured on ppocr_cls: they did);
    - the candidate (as quantized; its bias refitted; new scales; new rounding) with the lowest error on held-out
      calibration samples (one in four) is kept, so a layer never gets worse on them; and when the fitted model's
      outputs are further from the float model's on those samples than before, every layer is put back (declined,
      both errors in the report).

    Rewrites the integer weights and weight scales in place (new initializers), and the bias (int32, scale = input
    scale x weight scale, requantized when the weight scale changed; added where a Conv/Gemm had none). Records
    per layer the relative output error before and after (``recovery.RecoveryReport``).
    The integer grid is the scheme's weight range (the dtype the quantizer recorded), widened to every value stored
    (issue 11's int4 uses -8 with a signed scale); its storage may be int8/uint8/int16/uint16 or int4/uint4 (weight-
    only ``--weights int4``, DequantizeLinear at opset 21).

    Declines: no float reference or no calibration data (whole model); a weighted op whose weight is not a
    DequantizeLinear of constant integers (blocked, shared by several nodes, or per-axis other than the output
    channel); a Conv that is not 2-D or has auto_pad; Gemm with transA/alpha/beta; a node the float
    reference does not have (by name) or whose weight shape differs; weights inside subgraphs (not visited).
    """

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        ref = float_reference(ctx, self.name)
        if ref is None:
            return PassResult(False, {})
        start = time.perf_counter()
        scheme = scheme_of(ctx)
        found, declined = quantized_layers(model.graph, scheme.weights if scheme is not None else None)
        for node, reason in declined:
            ctx.decline(self.name, f"{node.op} '{node.name}'", reason)
        nodes, consts = float_weights(ref.model)
        todo: list[tuple[QuantizedLayer, onnx.NodeProto, np.ndarray]] = []
        for ql in found:
            rn = nodes.get(ql.node.name)
            wt = consts.get(rn.input[1]) if rn is not None and len(rn.input) > 1 else None
            wf = tensor_array(wt) if wt is not None else None
            if wf is not None and rn.op_type == "Gemm" and _trans_b(rn) != bool(ql.node.attrs.get("transB", 0)):
                wf = wf.T  # the weight quantizer wrote the Gemm with the other transB
            if rn is None or rn.op_type != ql.node.op or wf is None or wf.shape != ql.q.shape:
                ctx.decline(self.name, f"{ql.node.op} '{ql.node.name}'", "the float reference has no such node "
                            "with a constant weight of this shape")
                continue
            todo.append((ql, rn, np.asarray(wf, np.float64)))
        summary = recovery_report(ctx).step("fit")
        summary.declined += len(declined) + len(found) - len(todo)
        if not todo:
            return PassResult(False, {})
        feeds = ref.feeds
        plan = plan_rows(ref.model, feeds, [(ql.layer, rn.output[0]) for ql, rn, _ in todo],
                         lambda lay, n: max(16, rows_for(lay.k + 1) // n), ctx.rng)
        tg = targets(ref.model, feeds, plan, [(ql.layer, rn.output[0]) for ql, rn, _ in todo],
                     sums=[(ql.layer, "", rn.output[0], None) for ql, rn, _ in todo])
        use = np.array([not held_out(i) for i in range(len(feeds))])  # the feeds the fit learns from
        use = use if use.any() and not use.all() else np.ones(len(feeds), bool)
        cfg = AdaRoundConfig(iterations=int(ctx.option("fit_iterations") or AdaRoundConfig.iterations),
                             budget=float(ctx.option("fit_budget") or AdaRoundConfig.budget))
        objective = str(ctx.option("fit_objective") or "mse")
        temperature = float(ctx.option("fit_temperature") or 4.0)
        counts = {"bias": 0, "scales": 0, "adaround": 0, "kept": 0}
        changed = 0
        held = [f for f, u in zip(feeds, use, strict=True) if not u]
        before = model.to_onnx() if held else None
        first = len(recovery_report(ctx).layers)
        cap = InputCapture(feeds) if ctx.option("fit_incremental", True) else None
        for ql, rn, wf in ctx.progress_bar(todo, "fit", unit="layer", leave=False):
            t0 = time.perf_counter()
            kl = objective == "kl" or (objective == "auto" and classifier_head(ref.model, rn))
            proto, x_name = model.to_onnx(), ql.node.inputs[0].name
            xs = (cap.inputs(proto, ql.layer, x_name, rn.output[0], plan) if cap is not None else
                  inputs(proto, feeds, ql.layer, x_name, rn.output[0], plan, optimize=False))
            t1 = time.perf_counter()
            means = (xs.mean(use), tg.out_mean(rn.output[0], use))  # over every position, not the sampled ones
            choice, err0, err1 = self._fit(model, ql, wf, np.concatenate(xs.rows), tg.rows[rn.output[0]],
                                           plan.held(rn.output[0]), means, cfg, ctx, kl, temperature)
            counts[choice] += 1
            changed += choice != "kept"
            t2 = time.perf_counter()
            log.debug("fit %s (k %d, cout %d, groups %d): capture %.2fs, solve %.2fs", ql.node.name, ql.layer.k,
                      ql.layer.cout, ql.layer.groups, t1 - t0, t2 - t1)
            recovery_report(ctx).add(LayerError(ql.node.name, "fit", err0, err1, "quantized",
                                                f"{choice}{', kl' if kl else ''}, {t2 - t0:.2f} s"))
        model.graph.cleanup().toposort()
        for k, v in counts.items():
            summary.detail[k] = summary.detail.get(k, 0) + v
        if before is not None and changed:  # the whole model, on the held-out samples: never further from float
            e0, e1 = output_error(ref.model, before, held), output_error(ref.model, model.to_onnx(), held)
            summary.detail.update({"held_out_error_before": float(f"{e0:.6g}"), "held_out_error_after":
                                   float(f"{e1:.6g}"), "held_out_samples": len(held), "applied": e1 <= e0})
            if e1 > e0:
                model.replace_with(before)
                rep = recovery_report(ctx)  # the layers are as quantized again: their error is the one before
                rep.layers[first:] = [replace(e, after=e.before, note=f"{e.note}, reverted") if e.step == "fit"
                                      else e for e in rep.layers[first:]]
                ctx.decline(self.name, "model", f"the fitted model was further from the float one on held-out "
                            f"calibration samples ({e1:.3g} > {e0:.3g}, relative squared error): weights kept")
                summary.seconds += time.perf_counter() - start
                return PassResult(False, {"layers_reverted": changed})
        summary.layers += len(todo)
        summary.seconds += time.perf_counter() - start
        return PassResult(changed > 0, {"layers_fitted": changed, **counts})

    def _fit(self, model: Model, ql: QuantizedLayer, wf: np.ndarray, x: np.ndarray, y: np.ndarray, held: np.ndarray,
             means: tuple[np.ndarray, np.ndarray], cfg: AdaRoundConfig, ctx: PassContext, kl: bool,
             temperature: float) -> tuple[str, float, float]:
        """Choose and write this layer's weights (and bias); returns the choice and the relative output error on
        the held-out rows before and after. ``means``: the mean input row and output of the training feeds."""
        lay: Layer = ql.layer
        g, k, cg = lay.groups, lay.k, lay.cg
        b = ql.bias()
        xg = x.reshape(len(x), g, k).transpose(1, 0, 2).astype(np.float64)
        yg = (y - b).reshape(len(y), g, cg).transpose(1, 0, 2).astype(np.float64)
        if held.all():
            held = np.zeros(len(x), bool)
        train = ~held
        check = held if held.any() else train
        # the bias is fitted with the weights (AdaQuant): the weights fit the centred rows, the bias the means
        fit_bias = bool(ctx.option("fit_bias", True)) and lay.op != "MatMul" and not kl
        mx = means[0].reshape(g, 1, k) if fit_bias else np.zeros((g, 1, k))
        my = (means[1] - b).reshape(g, 1, cg) if fit_bias else np.zeros((g, 1, cg))

        def quad(mask: np.ndarray, centred: bool) -> Quadratic:
            q = Quadratic(g, k, cg)
            q.add(xg[:, mask] - (mx if centred else 0.0), yg[:, mask] - (my if centred else 0.0))
            return q

        plain = quad(check, False)  # the layer as quantized, with its own bias
        fit_obj: Objective = quad(train, fit_bias)
        judge: Objective = quad(check, fit_bias) if held.any() else fit_obj
        if kl and g == 1:
            fit_obj = SoftmaxKL(xg[:, train], (y[train])[None], b, temperature)
            judge = SoftmaxKL(xg[:, check], (y[check])[None], b, temperature)
        denom = max(float(np.sum(y[check].astype(np.float64) ** 2)), 1e-30)
        w, grid, q0 = lay.matrix(wf), ql.grid(), lay.matrix(ql.q)
        cands = {"bias": (grid, q0)} if fit_bias else {}
        # fewer training rows than weights per output (a layer after a global pooling sees one row per sample):
        # scales and rounding would interpolate the calibration data; only the bias (one unknown) is fitted
        enough = int(train.sum()) >= float(ctx.option("fit_min_rows", 1.0)) * k
        if bool(ctx.option("fit_scales", True)) and not np.any(ql.zero_point) and enough:
            g1, _ = search_scales(fit_obj, w, grid, ql.per_channel)
            cands["scales"] = (g1, g1.nearest(w))
        if bool(ctx.option("fit_rounding", True)) and enough:
            base = min([(grid, q0), *cands.values()], key=lambda c: float(fit_obj.errors(c[0].value(c[1])).sum()))[0]
            cands["adaround"] = (base, adaround(fit_obj, w, base, cfg))
        kept = float((judge if kl else plain).errors(grid.value(q0)).sum())
        errs = {"kept": kept, **{n: float(judge.errors(gr.value(q)).sum()) for n, (gr, q) in cands.items()}}
        best = min(errs, key=lambda n: (errs[n], n != "kept"))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("fit %s: held-out errors %s (float weights %.4g; on the training rows %s)", ql.node.name,
                      {n: f"{e:.4g}" for n, e in errs.items()}, float(judge.errors(w).sum()),
                      {n: f"{float(fit_obj.errors(gr.value(q)).sum()):.4g}" for n, (gr, q) in cands.items()})
        before = float(plain.errors(grid.value(q0)).sum()) / denom
        if best == "kept":
            return best, before, before
        gr, q = cands[best]
        after = float((quad(check, True) if fit_bias else plain).errors(gr.value(q)).sum()) / denom
        if best != "bias":
            scale = gr.scale.reshape(-1) if ql.per_channel else gr.scale.reshape(())
            write_weight(model.graph, ql, lay.weight(q), scale.astype(np.float32).astype(np.float64))
        if fit_bias:
            shift = (my - mx @ gr.value(q)).reshape(-1)
            scheme = scheme_of(ctx)
            write_bias(model.graph, ql, b + shift, scheme.bias_int32 if scheme is not None else True)
        return best, before, after
