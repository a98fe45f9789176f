"""QuantizeWeights: constant weights of MatMul / Gemm / Conv and embedding tables (Gather) -> low-bit or non-linear
formats, activations float.

Which format each layer gets (``onnxopt.weight_formats``: int4 / w8 per channel or block-wise, symmetric or not,
ternary, binary, pow2, kmeans:K), first match wins:

1. ``options["weight_formats"]``: node key (``analysis.regions.node_keys``) -> plan format name;
2. the precision plan (``ctx.plan``): the format of the region holding the node;
3. ``options["weights"]`` (the ``--weights`` spec, or a ``WeightSpec``): every other eligible layer (embedding
   tables, Gather from a constant 2-D table along axis 0, included unless ``options["weights_embeddings"]`` is False),
   except under a weight plan (``PlanWeights``, mode ``weights``), which names every layer it applies to: exactly
   the plan is written then.

A format that is not a weight format (``float``, the plan's ``int8`` / ``a16w8``) leaves the layer to others.

Rewrites (every graph, If/Loop/Scan bodies included):

- the weight becomes its encoded tensors and a standard-op decoder feeding the op: DequantizeLinear for affine
  formats (opset 21: int4/uint4 and blocks; 25: int2 for ternary/binary), Cast -> Gather [-> Mul] from a codebook
  for pow2 and kmeans; one decoder per (weight, format) when layers share a weight;
- an embedding table (Gather along axis 0 of a constant 2-D table) gets the same decoder, rows as channels, or with
  the option below and int4, one ``com.microsoft.GatherBlockQuantized`` (only the rows looked up are dequantized);
- a Gemm with transB=1 gets the transposed weight and transB=0 (onnxruntime fuses DequantizeLinear -> Gemm into
  MatMulNBits only then; measured, onnxruntime 1.32);
- with ``options["weights_matmulnbits"]`` = an accuracy level (the onnxruntime CPU targets set 4), a MatMul, or a
  Gemm with transA=0, alpha=beta=1 and a 1-D bias, whose format is affine becomes one ``com.microsoft.MatMulNBits``
  with that ``accuracy_level`` (onnxruntime's own quantizer leaves it out unless asked, and its nodes then take the
  fp32 path);
- rounding: with calibration data (``ctx.calibration``, at most ``options["weights_calib_samples"]``, default 32)
  GPTQ error compensation from each layer's input Hessian (``analysis.layer_hessians``), or for ternary / binary a
  least-squares refit of alpha; ``:rtn`` turns it off, ``:gptq`` asks for it (a decline says when it cannot be had).

``pass_state.WeightsReport`` (``ctx.state``): per layer its format, bytes before / after, rounding and notes;
what onnxruntime does with each decoder (MatMul / Gemm: fused into MatMulNBits at session start; Conv: the
DequantizeLinear runs at every inference, a storage format; codebook decoders (Cast/Gather/Mul): folded to fp32 at
session start, file size only; an int2 MatMul/Gemm weight with N % 4 != 0 is stored as int4: onnxruntime 1.32's
fused 2-bit MatMulNBits is wrong there, measured). With ``pass_state.WeightPlanState`` (PlanWeights' candidates)
the Hessians given there are used and each (layer, format) is encoded once.

Declines (each in ctx.declines): a weight that is not a float constant; a MatMul whose weight is the first input or
is not 2-D; a Gemm with transA; a Conv weight of rank < 3; a Gather that is not from a float 2-D table along axis 0;
ConvTranspose (not rewritten); a format that needs a higher opset than the model has (the recipe upgrades first;
when that fails its decline says why); a non-default-domain op; compensation for a layer inside a subgraph,
reading a shared weight, a grouped / SAME-padded / non-2-D
Conv, an embedding table, or without calibration data (rounded to nearest instead); MatMulNBits for a format that
is not affine, a Gemm with alpha/beta != 1 or a bias that is not 1-D of N (decoder form instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.analysis.layer_hessians import HessianRequest, conv_geometry, layer_hessians
from onnxopt.analysis.regions import node_keys
from onnxopt.ir import Model, constant_value, iter_graphs
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.pass_state import WeightPlanState, WeightsReport
from onnxopt.weight_codecs import encode
from onnxopt.weight_formats import INT4, Encoded, WeightSpec, parse_weights, plan_name, spec_of_format

from ._qdq import _is_float, _Names
from ._weight_writer import decoder, gather_block_quantized, matmul_nbits

log = logging.getLogger(__name__)

OPS = ("MatMul", "Gemm", "Conv", "Gather")
CALIB_SAMPLES = 32
NOTES = {
    "MatMul": "onnxruntime fuses DequantizeLinear -> MatMul/Gemm into MatMulNBits at session start",
    "Conv": "on onnxruntime a low-bit Conv weight is a storage format: its DequantizeLinear runs at every inference "
            "and nothing fuses it (smaller file, no faster)",
    "Gather": "on onnxruntime a low-bit embedding table decoded by DequantizeLinear is dequantized whole at every "
              "inference (com.microsoft.GatherBlockQuantized, emitted for onnxruntime targets, avoids that)",
    "codebook": "onnxruntime folds Gather/Cast/Mul decoders of constants to fp32 at session start: they save file "
                "size, not memory or time",
}


@dataclass
class _Layer:
    graph: gs.Graph
    node: gs.Node
    key: str
    spec: WeightSpec
    w: np.ndarray  # float weight in the layout encoded: [K, N] for MatMul/Gemm, as stored for Conv
    out_axis: int
    in_axis: int
    main: bool
    transpose_b: bool = False
    notes: list[str] = field(default_factory=list)


@register_pass
class QuantizeWeights(Pass):
    """MatMul/Gemm/Conv weights and embeddings -> int4 / ternary / binary / pow2 / kmeans / w8, weight-only."""

    lossless = False

    def __init__(self, matmulnbits: int | None = None) -> None:
        self.matmulnbits = matmulnbits  # the target's accuracy level for MatMulNBits (else the option)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        chooser = self._chooser(model, ctx)
        if chooser is None:
            return PassResult(False)
        layers = self.layers(model, ctx, chooser)
        if not layers:
            return PassResult(False)
        hessians = self._hessians(model, ctx, layers)
        stats: dict[str, int] = {}
        report: list[dict[str, Any]] = []
        namer = _Names(model.graph)
        cache: dict[tuple[str, str, bool], gs.Variable] = {}
        level = self.matmulnbits if self.matmulnbits is not None else ctx.option("weights_matmulnbits")
        touched: set[int] = set()
        for layer in layers:
            report.append(self._rewrite(layer, hessians.get(layer.key), namer, cache, level, ctx))
            stats[plan_name(layer.spec)] = stats.get(plan_name(layer.spec), 0) + 1
            touched.add(id(layer.graph))
        for g in iter_graphs(model.graph):
            if id(g) in touched:
                g.cleanup(remove_unused_graph_inputs=False, remove_unused_node_outputs=False).toposort()
        before = sum(r["bytes_before"] for r in report)
        after = sum(r["bytes_after"] for r in report)
        notes = sorted({n for r in report for n in r["notes"]})
        ctx.set_state(WeightsReport(report, before, after, round(after / before, 4) if before else None, notes))
        log.info("weights: %d layers, %d -> %d bytes", len(report), before, after)
        return PassResult(True, {"layers": len(report), **stats})

    def layers(self, model: Model, ctx: PassContext, chooser: Callable[[str], WeightSpec | None]) -> list[_Layer]:
        """The layers ``chooser`` (node key -> spec, None: left alone) gives a format and this pass can rewrite;
        the others are declined in ``ctx`` with the reason (the planner asks it for its regions)."""
        keys = node_keys(model.graph)
        main_ids = {id(n) for n in model.graph.nodes}
        layers: list[_Layer] = []
        for g in iter_graphs(model.graph):
            for node in g.nodes:
                if node.op not in (*OPS, "ConvTranspose") or not self._has_weight(node):
                    continue  # a MatMul of two activations, a Gather from a computed tensor: no weight
                if node.op == "Gather" and not ctx.option("weights_embeddings", True):
                    continue
                spec = chooser(keys.get(id(node), node.name))
                if spec is None:
                    continue
                where = f"{node.op} '{node.name}'"
                layer_or_reason = self._layer(g, node, keys.get(id(node), node.name), spec, model.opset,
                                              id(node) in main_ids)
                if isinstance(layer_or_reason, str):
                    ctx.decline(self.name, where, layer_or_reason)
                else:
                    layers.append(layer_or_reason)
        return layers

    # ------------------------------------------------------------------ which format

    def _chooser(self, model: Model, ctx: PassContext):
        explicit = dict(ctx.option("weight_formats") or {})
        plan = ctx.plan
        by_node: dict[str, str] = {}
        if plan is not None and getattr(plan, "regions", None):
            for region in plan.regions:
                by_node.update({n: plan.choices[region.id].format for n in region.nodes})
        default = ctx.option("weights")
        if isinstance(default, str):
            default = None if default in ("", "int8") else parse_weights(default)
        if plan is not None and getattr(plan, "mode", "") == "weights" and by_node:
            default = None  # a weight plan (passes/plan_weights.py) names every layer it applies to: exactly it
        if default is None and not any(spec_of_format(f) for f in [*explicit.values(), *by_node.values()]):
            return None

        def choose(key: str) -> WeightSpec | None:
            """The option's format, else the plan's (None for float, int8 and other non-weight formats), else
            ``--weights`` for a layer neither names."""
            fmt = explicit.get(key, by_node.get(key))
            return spec_of_format(fmt) if fmt is not None else default

        return choose

    @staticmethod
    def _has_weight(node: gs.Node) -> bool:
        if node.op == "MatMul" and len(node.inputs) > 1:
            return constant_value(node.inputs[1]) is not None or constant_value(node.inputs[0]) is not None
        if node.op == "Gather":
            return bool(node.inputs) and constant_value(node.inputs[0]) is not None
        return True

    @staticmethod
    def _layer(graph: gs.Graph, node: gs.Node, key: str, spec: WeightSpec, opset: int, main: bool
               ) -> _Layer | str:
        if (node.domain or "") not in ("", "ai.onnx"):
            return "not a default-domain op"
        if node.op == "ConvTranspose":
            return "ConvTranspose weights are not rewritten"
        if len(node.inputs) < 2:
            return "no weight input"
        if node.op == "Gather":
            table = constant_value(node.inputs[0])
            if table is None or constant_value(node.inputs[1]) is not None:
                return "not a lookup in a constant table"
            if np.asarray(table).dtype.kind != "f" or np.asarray(table).ndim != 2 or int(node.attrs.get("axis", 0)):
                return "not a float 2-D table gathered along axis 0"
            if opset < spec.opset:
                return f"{plan_name(spec)} needs opset {spec.opset} (the model has {opset})"
            return _Layer(graph, node, key, spec, np.asarray(table, np.float32), 0, 1, main)
        if node.op == "MatMul" and constant_value(node.inputs[0]) is not None:
            return "the constant is the first input (weight on the left)"
        w = constant_value(node.inputs[1])
        if w is None:
            return "weight is not a constant"
        if not _is_float(node.inputs[1]) or np.asarray(w).dtype.kind != "f":
            return "weight is not floating-point"
        w = np.asarray(w, dtype=np.float32)
        if opset < spec.opset:
            return (f"{plan_name(spec)} needs opset {spec.opset} (the model has {opset}): the recipe upgrades the "
                    "opset first; see UpgradeOpset's decline for why it could not")
        if node.op == "Conv":
            if w.ndim < 3:
                return f"Conv weight of rank {w.ndim}"
            return _Layer(graph, node, key, spec, w, 0, 1, main)
        if w.ndim != 2:
            return f"weight of rank {w.ndim} (only 2-D weights)"
        if node.op == "Gemm":
            if node.attrs.get("transA", 0):
                return "Gemm with transA"
            if node.attrs.get("transB", 0):
                return _Layer(graph, node, key, spec, np.ascontiguousarray(w.T), 1, 0, main, transpose_b=True)
        return _Layer(graph, node, key, spec, w, 1, 0, main)

    # ------------------------------------------------------------------ calibration statistics

    def _hessians(self, model: Model, ctx: PassContext, layers: list[_Layer]) -> dict[str, np.ndarray]:
        shared = ctx.state(WeightPlanState)
        if shared is not None:  # the planner's candidates: computed once from the float model, shared by all
            given = shared.hessians
            return {la.key: given[la.key] for la in layers if la.spec.rounding != "rtn" and la.key in given}
        readers: dict[str, int] = {}
        for g in iter_graphs(model.graph):
            for n in g.nodes:
                for t in n.inputs:
                    if isinstance(t, gs.Constant) or constant_value(t) is not None:
                        readers[t.name] = readers.get(t.name, 0) + 1
        requests: list[HessianRequest] = []
        for layer in layers:
            if layer.spec.rounding == "rtn":
                continue
            reason = None
            if ctx.calibration is None:
                reason = "no calibration data"
            elif not layer.main:
                reason = "the layer is inside a subgraph (its inputs cannot be captured)"
            elif readers.get(layer.node.inputs[1].name, 0) > 1:
                reason = "the weight is shared by several layers"
            conv = None
            if reason is None and layer.node.op == "Gather":
                reason = "an embedding table has no input activations"
            if reason is None and layer.node.op == "Conv":
                conv, reason = conv_geometry(layer.node.attrs, layer.w.shape[2:])
            if reason is not None:
                if layer.spec.rounding == "gptq" or ctx.calibration is not None:
                    ctx.decline(self.name, f"{layer.node.op} '{layer.node.name}'",
                                f"no error compensation ({reason}): rounded to nearest")
                layer.notes.append(f"round to nearest ({reason})")
                continue
            k = int(np.prod(layer.w.shape[1:])) if layer.node.op == "Conv" else layer.w.shape[0]
            requests.append(HessianRequest(layer.key, layer.node.inputs[0].name, k, conv))
        if not requests:
            return {}
        from onnxopt.calibration import input_specs_of, open_calibration_data

        proto = model.to_onnx()
        limit = int(ctx.option("weights_calib_samples", CALIB_SAMPLES))
        feeds = []
        for feed in open_calibration_data(ctx.calibration, input_specs_of(proto)):
            feeds.append(dict(feed))
            if len(feeds) >= limit:
                break
        return layer_hessians(proto, feeds, requests, seed=int(ctx.option("seed", 0) or 0))

    # ------------------------------------------------------------------ rewrite

    def _rewrite(self, layer: _Layer, hessian: np.ndarray | None, namer: _Names,
                 cache: dict[tuple[str, str, bool], gs.Variable], level: Any, ctx: PassContext) -> dict[str, Any]:
        node, spec = layer.node, layer.spec
        w_idx = 0 if node.op == "Gather" else 1
        w_t = node.inputs[w_idx]
        shared = ctx.state(WeightPlanState)
        memo = None if shared is None else shared.encoded  # the planner's candidates: each (layer, format) encoded once
        enc: Encoded | None = None if memo is None else memo.get((layer.key, spec))
        if enc is None:
            enc = encode(layer.w, spec, layer.out_axis, layer.in_axis, hessian)
            if memo is not None:
                memo[(layer.key, spec)] = enc
        rounding = "nearest" if hessian is None else "gptq" if spec.kind not in ("ternary", "binary") \
            else "least-squares alpha"
        notes = list(layer.notes)
        if node.op in ("MatMul", "Gemm") and spec.affine and level is not None and self._nbits_ok(node, layer, ctx):
            k, n = layer.w.shape
            bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
            matmul_nbits(layer.graph, node, enc, k, n, int(level), namer, bias)
            notes.append(f"emitted as com.microsoft.MatMulNBits, accuracy_level {int(level)}")
        elif node.op == "Gather" and level is not None and spec.kind == "int4":
            gather_block_quantized(layer.graph, node, enc, namer)
            notes.append("emitted as com.microsoft.GatherBlockQuantized")
        else:
            if spec.bits == 2 and node.op != "Conv" and layer.w.shape[1] % 4:
                # onnxruntime 1.32 fuses int2 DequantizeLinear -> MatMul into a 2-bit MatMulNBits that computes wrong
                # results when N % 4 != 0 (measured: relative error 1.0-1.8 against the unfused graph); the same
                # values as int4 fuse correctly
                enc = replace(enc, values=enc.values.astype(np.int8).astype(INT4), bits=4)
                notes.append(f"stored as int4 (N={layer.w.shape[1]} is not a multiple of 4: onnxruntime 1.32's "
                             "2-bit MatMulNBits fusion is wrong there)")
            key = (w_t.name, plan_name(spec), layer.transpose_b)
            if key not in cache or hessian is not None:
                cache[key] = decoder(layer.graph, enc, w_t.name or namer("weight"), namer, list(layer.w.shape))
            node.inputs[w_idx] = cache[key]
            if layer.transpose_b:
                node.attrs["transB"] = 0
            notes.append(NOTES["codebook"] if not spec.affine else NOTES.get(node.op, NOTES["MatMul"]))
        return {"node": layer.key, "op": node.op, "format": plan_name(spec),
                "shape": list(layer.w.shape), "bytes_before": int(layer.w.size * 4),
                "bytes_after": int(enc.storage_bytes), "rounding": rounding, "notes": notes}

    def _nbits_ok(self, node: gs.Node, layer: _Layer, ctx: PassContext) -> bool:
        if node.op == "Gemm":
            a = node.attrs
            bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
            reason = None
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                reason = "Gemm with alpha/beta != 1"
            elif len(node.inputs) > 2 and node.inputs[2].name and (bias is None or np.asarray(bias).shape !=
                                                                    (layer.w.shape[1],)):
                reason = "Gemm bias is not a 1-D constant of N"
            if reason:
                ctx.decline(self.name, f"Gemm '{node.name}'", f"no MatMulNBits ({reason}): decoder form instead")
                return False
        return True


__all__ = ["QuantizeWeights"]
