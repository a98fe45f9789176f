"""QuantizeDynamic: MatMul/Gemm with constant weights -> int8 weights, activations quantized at run time.

Rewrites (every graph, If/Loop/Scan bodies included), in the form onnxruntime's ``quantize_dynamic`` emits and
fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat:

    A -> DynamicQuantizeLinear -> (A_q uint8, A_scale, A_zp)
    MatMulInteger(A_q, W_q int8, A_zp, W_zp) -> Cast(float) -> Mul(A_scale * W_scale) [-> Add(bias) for Gemm]

- MatMul whose second input is a constant of rank 2: W_q per output column (``options["dynamic_per_channel"]``,
  default True: same speed in onnxruntime, better fidelity) or per tensor, symmetric int8 in [-127, 127], or
  in [-63, 63] when the scheme's weights are ``reduce_range`` (x86 without VNNI: onnxruntime's u8 x s8
  MatMulInteger adds product pairs in a saturating int16 there; measured on an AVX2-only EPYC, full-range
  weights dropped a small Gemm's cosine to 0.94, 7-bit weights keep it at 0.9999);
- Gemm with transA=0, alpha=1, beta=1 and a constant 2-D B (transposed to [K, N] when transB=1); its C becomes
  an Add after the scale Mul.

With a dynamic plan that has regions (``PlanPrecision`` planned it per MatMul/Gemm, ``passes/_plan_backoff.py``),
only the nodes whose region is ``int8`` are rewritten; ``float`` ones are left as they are (stat ``float_by_plan``).

Declines: node excluded by name or op type (``exclude_nodes``/``exclude_ops`` options, scheme.exclude_nodes);
weight not constant, not float, or not of rank 2; Gemm with transA, alpha != 1 or beta != 1; first input not
float; opset below 11 (DynamicQuantizeLinear).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from onnxopt.analysis.regions import node_keys
from onnxopt.ir import Model, constant_value, iter_graphs
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.pass_state import QuantParams
from onnxopt.plan import INT8
from onnxopt.quant_scheme import QuantScheme, TensorQuant
from onnxopt.weights import release_tensor

from .quantize_static import _is_float, _Names, weight_params

# DynamicQuantizeLinear's activations: uint8 asymmetric over each run's own range
DYNAMIC_ACTIVATIONS = TensorQuant(dtype="uint8", symmetric=False)


def dynamic_weight_quant(scheme: QuantScheme, per_channel: bool = True) -> TensorQuant:
    """The weights QuantizeDynamic writes: symmetric int8, per output column by default, in the scheme's range
    (7-bit where the target's u8 x s8 kernels saturate)."""
    return TensorQuant(dtype="int8", symmetric=True, per_channel=per_channel, reduce_range=scheme.weights.reduce_range)


@register_pass
class QuantizeDynamic(Pass):
    """MatMul/Gemm with constant weights -> DynamicQuantizeLinear + MatMulInteger with int8 weights."""

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        """As the precision plan says: nothing when it chose another mode (static, none)."""
        if ctx.plan is not None and ctx.plan.mode != "dynamic":
            return PassResult(False)
        return self.rewrite(model, ctx)

    def rewrite(self, model: Model, ctx: PassContext) -> PassResult:
        """The rewrite itself (the planner times it on a copy, where the host stands for the target)."""
        if model.opset < 11:
            ctx.decline(self.name, "model", f"DynamicQuantizeLinear needs opset 11 (the model has {model.opset})")
            return PassResult(False)
        plan_scheme = ctx.plan.scheme if ctx.plan is not None else None
        scheme: QuantScheme = plan_scheme or ctx.option("scheme") or QuantScheme()
        excl_ops = set(ctx.option("exclude_ops") or ())
        excl_nodes = set(ctx.option("exclude_nodes") or ()) | set(scheme.exclude_nodes)
        wq = dynamic_weight_quant(scheme, bool(ctx.option("dynamic_per_channel", True)))
        namer = _Names(model.graph)
        params: dict[str, dict[str, Any]] = ctx.setdefault_state(QuantParams).tensors
        planned = self._planned(model, ctx)
        count = kept = 0
        for graph in list(iter_graphs(model.graph)):
            touched = False
            shared: dict[int, tuple[gs.Variable, gs.Variable, gs.Variable]] = {}
            for node in list(graph.nodes):
                if node.op not in ("MatMul", "Gemm") or (node.domain or "") not in ("", "ai.onnx"):
                    continue
                reason = self.check(node, excl_ops, excl_nodes)
                if reason:
                    ctx.decline(self.name, f"{node.op} '{node.name}'", reason)
                    continue
                if planned is not None and planned.get(id(node), INT8) != INT8:
                    kept += 1  # the plan keeps it float (its reason is in the plan)
                    continue
                self._rewrite(graph, node, wq, namer, params, shared)
                count += 1
                touched = True
            if touched:
                graph.cleanup(remove_unused_graph_inputs=False, remove_unused_node_outputs=False).toposort()
        stats = {"matmuls": count} if count else {}
        if kept:
            stats["float_by_plan"] = kept
        return PassResult(bool(count), stats)

    @staticmethod
    def _planned(model: Model, ctx: PassContext) -> dict[int, str] | None:
        """Node id -> the plan's format, when a dynamic plan has regions (else None: every MatMul/Gemm)."""
        plan = ctx.plan
        if plan is None or plan.mode != "dynamic" or not plan.regions:
            return None
        by_key = {n: plan.choices[r.id].format for r in plan.regions for n in r.nodes}
        keys = node_keys(model.graph)
        return {nid: by_key[k] for nid, k in keys.items() if k in by_key}

    @staticmethod
    def check(node: gs.Node, excl_ops: set[str], excl_nodes: set[str]) -> str | None:
        """Why ``node`` cannot be rewritten, None when it can."""
        if node.name and node.name in excl_nodes:
            return "excluded by name"
        if node.op in excl_ops:
            return "op type excluded"
        if len(node.inputs) < 2:
            return "fewer than two inputs"
        w = constant_value(node.inputs[1])
        if w is None:
            return "weight is not a constant"
        if np.asarray(w).dtype.kind != "f" or np.asarray(w).ndim != 2:
            return "weight is not a float matrix (rank 2)"
        if constant_value(node.inputs[0]) is not None or not _is_float(node.inputs[0]):
            return "first input is not a float activation"
        if node.op == "Gemm":
            a = node.attrs
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                return "Gemm with transA or alpha/beta != 1"
        return None

    def _rewrite(self, graph: gs.Graph, node: gs.Node, wq: TensorQuant, namer: _Names,
                 params: dict[str, dict[str, Any]], shared: dict[int, tuple[gs.Variable, ...]]) -> None:
        a, w_t, out = node.inputs[0], node.inputs[1], node.outputs[0]
        w = np.asarray(constant_value(w_t), dtype=np.float32)
        if node.op == "Gemm" and node.attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)
        qw, scale, zp = weight_params(w, wq, 1 if wq.per_channel else None)
        base = node.name or out.name
        params[w_t.name] = {"kind": "weight", "axis": 1 if wq.per_channel else None, "channels": int(scale.size),
                            "scale_min": float(scale.min()), "scale_max": float(scale.max()),
                            "min": float(w.min()), "max": float(w.max()), "dtype": "int8", "dynamic": True}
        release_tensor(w_t)  # a large model's float weight read from its file: its pages leave memory now
        new: list[gs.Node] = []
        if id(a) not in shared:  # one DynamicQuantizeLinear per input, shared by the MatMuls reading it (Q/K/V)
            aq = gs.Variable(namer(f"{base}_input_quantized"), dtype=np.uint8)
            a_scale = gs.Variable(namer(f"{base}_input_scale"), dtype=np.float32, shape=[])
            a_zp = gs.Variable(namer(f"{base}_input_zero_point"), dtype=np.uint8, shape=[])
            new.append(gs.Node("DynamicQuantizeLinear", namer(f"{base}_DynamicQuantizeLinear"), inputs=[a],
                               outputs=[aq, a_scale, a_zp]))
            shared[id(a)] = (aq, a_scale, a_zp)
        aq, a_scale, a_zp = shared[id(a)]
        acc = gs.Variable(namer(f"{base}_int32"), dtype=np.int32)
        acc_f = gs.Variable(namer(f"{base}_int32_float"), dtype=np.float32)
        out_scale = gs.Variable(namer(f"{base}_output_scale"), dtype=np.float32)
        new += [
            gs.Node("MatMulInteger", namer(f"{base}_MatMulInteger"),
                    inputs=[aq, gs.Constant(namer(f"{w_t.name}_quantized"), qw), a_zp,
                            gs.Constant(namer(f"{w_t.name}_zero_point"), zp)], outputs=[acc]),
            gs.Node("Cast", namer(f"{base}_Cast"), attrs={"to": TensorProto.FLOAT}, inputs=[acc], outputs=[acc_f]),
            gs.Node("Mul", namer(f"{base}_scale_Mul"),
                    inputs=[a_scale, gs.Constant(namer(f"{w_t.name}_scale"), scale)], outputs=[out_scale]),
        ]
        has_bias = node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name
        y = gs.Variable(namer(f"{base}_unbiased"), dtype=np.float32) if has_bias else out
        new.append(gs.Node("Mul", namer(f"{base}_output_Mul"), inputs=[acc_f, out_scale], outputs=[y]))
        if has_bias:
            new.append(gs.Node("Add", namer(f"{base}_bias_Add"), inputs=[y, node.inputs[2]], outputs=[out]))
        node.outputs.clear()
        node.inputs.clear()
        graph.nodes.extend(new)
