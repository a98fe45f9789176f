"""CorrectBias: fold the mean output shift that quantization causes, measured on calibration data, into the bias."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import onnx

from onnxopt.analysis.layerwise import Layer, held_out, output_error, plan_rows, targets
from onnxopt.analysis.layerwise_capture import InputCapture
from onnxopt.ir import Model
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.recovery import FloatReference, LayerError, float_reference, recovery_report

from ._qdq_layers import QuantizedLayer, float_weights, quantized_layers, read_layer, scheme_of, write_bias

log = logging.getLogger(__name__)

MODES = ("auto", "fast", "sequential")
REPORT_ROWS = 512  # sampled output positions per layer for the per-layer error in the report


@register_pass
class CorrectBias(Pass):
    """Empirical bias correction: per output channel, the mean shift between float and quantized outputs -> bias.

    Runs after Q/DQ insertion (and after FitQuantizedWeights when both run); reads the ``recovery.FloatReference``
    recorded before quantization. For each Conv and Gemm whose weight is a DequantizeLinear of constant integers,
    the shift ``E[W x] - E[Q(W) Q(x)]`` per output channel, over every output position of every
    calibration sample, goes into its bias. ``bias_correction``:

    - ``auto`` (default): ``sequential`` after FitQuantizedWeights (whose biases already carry the error that
      reaches each layer from the layers before it, which the fast form would take out again), else ``fast``;
    - ``fast`` (NNCF's FastBiasCorrection): ``x`` is the float model's input to the layer, and its
      quantized form goes through the layer's own input Q/DQ; one pass over the calibration data on the float
      model measures every layer (the means of its im2col rows, so the shift is exact for those inputs);
    - ``sequential`` (NNCF's BiasCorrection): layer by layer in graph order, the shift between the float model's
      output and the quantized model's, as corrected so far (catches the error that reaches a layer from the layers
      before it); each output is computed from the layer's input, itself from the inputs kept for the layers
      before (``layerwise_capture.InputCapture``), not by running the whole prefix per layer.

    The shifts are measured on three calibration samples in four; the fourth (when there are at least four) judges
    the whole model: when the corrected model's outputs (a Softmax's logits) are further from the float model's there
    than the uncorrected ones, every bias is put back (declined, with both errors in the report); else the fast form
    measures the shifts again on every sample.

    Rewrites: the int32 values of the bias's DequantizeLinear (its scale stays input scale x weight scale), a float
    bias constant, or a new bias where a Conv/Gemm had none (int32 with that scale when the input is quantized and
    the scheme keeps biases int32, else float). Records per layer the relative output error before and after on
    sampled positions (``recovery.RecoveryReport``).
    Declines: no float reference or no calibration data (whole model); a MatMul (no bias input); what
    FitQuantizedWeights declines (weights not a DequantizeLinear of constants, Conv not 2-D, Gemm with
    transA/alpha/beta, a node the float reference lacks); weights inside subgraphs (not visited).
    """

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        ref = float_reference(ctx, self.name)
        if ref is None:
            return PassResult(False, {})
        mode = str(ctx.option("bias_correction") or "auto")
        if mode not in MODES:
            from onnxopt.errors import UserError

            raise UserError(f"bias_correction {mode!r}: choose one of {', '.join(MODES)}")
        if mode == "auto":
            fitted = any(s.step == "fit" and s.layers for s in recovery_report(ctx).steps)
            mode = "sequential" if fitted else "fast"
        start = time.perf_counter()
        scheme = scheme_of(ctx)
        found, declined = quantized_layers(model.graph, scheme.weights if scheme is not None else None)
        nodes, _ = float_weights(ref.model)
        todo: list[tuple[QuantizedLayer, onnx.NodeProto]] = []
        for ql in found:
            rn = nodes.get(ql.node.name)
            if ql.node.op == "MatMul":
                declined.append((ql.node, "MatMul has no bias input"))
            elif rn is None or rn.op_type != ql.node.op:
                declined.append((ql.node, "the float reference has no such node"))
            else:
                todo.append((ql, rn))
        for node, reason in declined:
            ctx.decline(self.name, f"{node.op} '{node.name}'", reason)
        summary = recovery_report(ctx).step("bias")
        summary.declined += len(declined)
        summary.detail["mode"] = mode
        if not todo:
            return PassResult(False, {})
        # the shifts come from three calibration samples in four; the fourth judges the whole model, before and after
        held = [f for i, f in enumerate(ref.feeds) if held_out(i)] if len(ref.feeds) >= 4 else []
        train = FloatReference(ref.model, [f for i, f in enumerate(ref.feeds) if not held or not held_out(i)])
        before = model.to_onnx() if held else None
        plan = plan_rows(ref.model, train.feeds, [(ql.layer, rn.output[0]) for ql, rn in todo],
                         lambda lay, n: max(1, REPORT_ROWS // n), ctx.rng)
        int32 = scheme.bias_int32 if scheme is not None else True
        run = self._fast if mode == "fast" else self._sequential
        done = run(model, train, todo, plan, int32, ctx)
        model.graph.cleanup().toposort()
        if before is not None and done:
            e0, e1 = output_error(ref.model, before, held), output_error(ref.model, model.to_onnx(), held)
            summary.detail.update({"held_out_error_before": float(f"{e0:.6g}"), "held_out_error_after":
                                   float(f"{e1:.6g}"), "held_out_samples": len(held)})
            if e1 > e0:
                model.replace_with(before)
                summary.detail["applied"] = False
                ctx.decline(self.name, "model", f"the corrected model was further from the float one on held-out "
                            f"calibration samples ({e1:.3g} > {e0:.3g}, relative squared error): biases kept")
                summary.seconds += time.perf_counter() - start
                return PassResult(False, {"biases_reverted": done})
            summary.detail["applied"] = True
            if mode == "fast":  # judged good: measure the shifts on every sample (one more pass over the float model)
                model.replace_with(before)
                todo = [(ql, rn) for ql, rn in ((_reread(model, ql, scheme), rn) for ql, rn in todo) if ql is not None]
                plan = plan_rows(ref.model, ref.feeds, [(ql.layer, rn.output[0]) for ql, rn in todo],
                                 lambda lay, n: max(1, REPORT_ROWS // n), ctx.rng)
                recovery_report(ctx).layers[:] = [e for e in recovery_report(ctx).layers if e.step != "bias"]
                done = self._fast(model, ref, todo, plan, int32, ctx)
                model.graph.cleanup().toposort()
        summary.seconds += time.perf_counter() - start
        summary.layers += done
        return PassResult(done > 0, {"biases_corrected": done})

    @staticmethod
    def _fast(model: Model, ref: FloatReference, todo: list[tuple[QuantizedLayer, onnx.NodeProto]], plan, int32: bool,
              ctx: PassContext) -> int:
        sums = [(ql.layer, rn.input[0], rn.output[0], _quantizer(ql)) for ql, rn in todo]
        outs = [(ql.layer, rn.output[0]) for ql, rn in todo]
        rows = [(ql.layer, rn.input[0], rn.output[0]) for ql, rn in todo]
        tg = targets(ref.model, ref.feeds, plan, outs, sums=sums, in_rows=rows)
        done = 0
        for ql, rn in ctx.progress_bar(todo, "bias", unit="layer", leave=False):
            lay, out = ql.layer, rn.output[0]
            n = tg.counts[out]
            mean_f = tg.out_sums[out] / n
            m = tg.in_sums[out] / n                                          # mean of Q(x) rows, [g * k]
            wq = lay.matrix(ql.weight())                                     # [g, k, cg]
            b = ql.bias()
            mean_q = np.einsum("gk,gkc->gc", m.reshape(lay.groups, lay.k), wq).reshape(-1) + b
            shift = mean_f - mean_q
            xr = tg.inputs[out]
            pred = _apply(lay, ql.quantize_input(xr), wq) + b
            _record(ctx, ql, pred, tg.rows[out], shift, "float")
            if write_bias(model.graph, ql, b + shift, int32) is None:
                done += 1
        return done

    @staticmethod
    def _sequential(model: Model, ref: FloatReference, todo: list[tuple[QuantizedLayer, onnx.NodeProto]], plan,
                    int32: bool, ctx: PassContext) -> int:
        outs = [(ql.layer, rn.output[0]) for ql, rn in todo]
        sums = [(ql.layer, rn.input[0], rn.output[0], None) for ql, rn in todo]
        tg = targets(ref.model, ref.feeds, plan, outs, sums=sums)
        done = 0
        cap = InputCapture(ref.feeds)  # each output from the layer's input, kept: not the whole prefix each time
        for ql, rn in ctx.progress_bar(todo, "bias", unit="layer", leave=False):
            lay, out = ql.layer, rn.output[0]
            name = ql.node.outputs[0].name
            total, count, got = 0.0, 0, []
            proto = model.to_onnx()
            cap.values(proto, ql.node.inputs[0].name)  # final: depends on corrected layers only
            for f, value in enumerate(cap.values(proto, name, keep=False)):  # changes with this layer's bias
                values = {name: value}
                y = np.asarray(values[name], dtype=np.float64)
                ys = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1]) if lay.op == "Conv" else y.reshape(-1, y.shape[-1])
                total, count = total + ys.sum(0), count + len(ys)
                got.append(lay.out_rows(values[name], plan.positions[out][f]))
            shift = tg.out_sums[out] / tg.counts[out] - total / count
            _record(ctx, ql, np.concatenate(got), tg.rows[out], shift, "quantized")
            if write_bias(model.graph, ql, ql.bias() + shift, int32) is None:
                done += 1
        return done


def _reread(model: Model, ql: QuantizedLayer, scheme) -> QuantizedLayer | None:
    """``ql`` read again from ``model`` (after ``replace_with``, the graph's nodes are new objects)."""
    node = next((n for n in model.graph.nodes if n.name == ql.node.name), None)
    got = read_layer(node, scheme.weights if scheme is not None else None) if node is not None else None
    return got if isinstance(got, QuantizedLayer) else None


def _quantizer(ql: QuantizedLayer) -> Callable[[np.ndarray], np.ndarray] | None:
    return None if ql.input_quant is None else ql.quantize_input


def _apply(lay: Layer, rows: np.ndarray, wq: np.ndarray) -> np.ndarray:
    """Layer outputs [P, cout] of input rows [P, g * k] with weights [g, k, cg] (no bias)."""
    x = rows.reshape(len(rows), lay.groups, lay.k).transpose(1, 0, 2)
    return (x @ wq).transpose(1, 0, 2).reshape(len(rows), -1)


def _record(ctx: PassContext, ql: QuantizedLayer, pred: np.ndarray, target: np.ndarray, shift: np.ndarray,
            inputs: str) -> None:
    t = np.asarray(target, np.float64)
    denom = max(float(np.sum(t * t)), 1e-30)
    d = np.asarray(pred, np.float64) - t
    before = float(np.sum(d * d)) / denom
    after = float(np.sum((d + shift) ** 2)) / denom
    recovery_report(ctx).add(LayerError(ql.node.name, "bias", before, after, inputs,
                                        f"mean |shift| {float(np.mean(np.abs(shift))):.3g}"))
