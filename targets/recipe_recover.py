"""The accuracy-recovery steps of every target's recipe (``--recover``), around the quantization step.

``options["recover"]``: a comma list of ``bias``, ``cle``, ``fit``, ``smooth`` (or a sequence of them), ``none`` for
none; unset, the target's default (``default_recover``):

- ``bias`` (CorrectBias, fast form) wherever activations are quantized from calibration data: NNCF runs its
  FastBiasCorrection by default, and it costs one pass over the calibration data;
- ``cle`` (EqualizeCrossLayer) when the scheme's weights are per tensor (``--per-tensor-weights``, or a target
  whose scheme is): with per-channel weights each output channel has its own grid already, and equalizing only
  moves range between the activations;
- ``fit`` (FitQuantizedWeights) when the weights have 4 bits or fewer: 8-bit rounding error is small next to the
  activations' error, and fitting costs a pass over the data per layer plus the solver;
- ``smooth`` (SmoothActivations, SmoothQuant's channel smoothing of MatMul/Gemm inputs) only when asked for
  (``--recover smooth``, with calibration data to measure channel ranges on), simulating the mode ``auto`` or
  ``--quantize`` resolves to (``choose_mode``). Not a default: measured (bench/smooth.py, bench/plan.py, AVX2 host)
  it lowers MiniLM's dynamic-int8 embedding error 3x (1 - cosine 0.00157 -> 0.00049) and its nearest-neighbour
  agreement 91.7% -> 95.8%, but its Mul nodes cost about 5% latency on a small BERT, and the planned MiniLM with it
  kept 4 MatMuls float instead of 3 (5.40 against 4.89 ms), so it did not pay where the planner decides.

Order: ``cle`` and ``smooth`` on the float model before quantization, then KeepFloatReference (the float model the
later steps fit to), the quantization steps, then ``fit`` (weights and scales) and ``bias`` (the mean shift that
remains).

Weight-only formats (``--weights``, issue 11's QuantizeWeights, activations float): ``--recover`` applies to them
too; unset, ``fit,bias`` for ``int4`` per channel (4 bits, the case fitting is for, with or after GPTQ's rounding)
when there is calibration data (``options["calibration"]``), else nothing (blocked int4, whose scales the fit does
not take, ternary/binary, codebooks and w8 get no step: the fit and the bias correction would only decline them).
There ``fit`` and ``bias`` run inside the quantization step (``weight_only_recovery``, called by
``recipe_quantize.weight_steps``), before the MatMul/Gemm layers are packed into MatMulNBits for the onnxruntime
CPU targets, so ``recover_steps`` gives only the steps before quantization.

``options["per_tensor_weights"]``: weights quantized per tensor (NPUs that take no per-channel scales);
``scheme_for_options`` applies it to a target's scheme.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from onnxopt.errors import UserError
from onnxopt.pass_manager import FixedPoint, Pass
from onnxopt.quant_scheme import QuantScheme
from onnxopt.recovery import RECOVERY_STEPS

LOW_BITS = 4


def parse_recover(spec: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``--recover`` as a tuple of steps (``()`` for ``none``), or None when not given (the target's default)."""
    if spec is None:
        return None
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    if items == ["none"]:
        return ()
    bad = [s for s in items if s not in RECOVERY_STEPS]
    if bad or not items:
        raise UserError(f"--recover {spec if isinstance(spec, str) else ','.join(spec)}: give a comma list of "
                        f"{', '.join(RECOVERY_STEPS)}, or none")
    return tuple(dict.fromkeys(items))


def scheme_for_options(scheme: QuantScheme | None, options: dict[str, Any]) -> QuantScheme | None:
    """``scheme`` with the user's weight options applied (``per_tensor_weights``)."""
    if scheme is not None and options.get("per_tensor_weights"):
        return replace(scheme, weights=replace(scheme.weights, per_channel=False))
    return scheme


def weight_bits(scheme: QuantScheme) -> int:
    lo, hi = scheme.weights.qrange
    return int(hi - lo).bit_length()


def weight_only(options: dict[str, Any]) -> bool:
    """Whether ``options`` ask for a weight-only format (``--weights`` other than int8)."""
    spec = options.get("weights")
    return bool(spec) and spec != "int8"


def _weight_only_default(options: dict[str, Any]) -> tuple[str, ...]:
    from onnxopt.weight_formats import WeightSpec, parse_weights

    spec = options.get("weights")
    spec = spec if isinstance(spec, WeightSpec) else parse_weights(str(spec))
    if options.get("calibration") is None or spec.kind != "int4" or spec.block:
        return ()
    return ("fit", "bias")


def default_recover(scheme: QuantScheme | None, options: dict[str, Any]) -> tuple[str, ...]:
    """The steps a target runs when the user names none (see the module docstring)."""
    mode = options.get("quantize") or "auto"
    if scheme is None or mode == "none":
        return ()
    if weight_only(options):
        return _weight_only_default(options)
    if mode == "dynamic":
        return ()
    steps = []
    if not scheme.weights.per_channel:
        steps.append("cle")
    if weight_bits(scheme) <= LOW_BITS:
        steps.append("fit")
    steps.append("bias")
    return tuple(steps)


def recover_steps(scheme: QuantScheme | None, options: dict[str, Any], default: tuple[str, ...] | None = None
                  ) -> tuple[list[Pass | FixedPoint], list[Pass | FixedPoint]]:
    """(steps before quantization, steps after it) for ``options["recover"]`` or, unset, ``default`` (else the rule
    ``default_recover``)."""
    from onnxopt.passes.correct_bias import CorrectBias
    from onnxopt.passes.equalize_cross_layer import EqualizeCrossLayer
    from onnxopt.passes.fit_quantized_weights import FitQuantizedWeights
    from onnxopt.passes.keep_float_reference import KeepFloatReference
    from onnxopt.passes.smooth_activations import SmoothActivations

    if (options.get("quantize") or "auto") == "none" or scheme is None:
        return [], []
    asked = parse_recover(options.get("recover"))
    steps = asked if asked is not None else default if default is not None else default_recover(scheme, options)
    before: list[Pass | FixedPoint] = []
    after: list[Pass | FixedPoint] = []
    if "cle" in steps:
        before.append(EqualizeCrossLayer(scheme.weights))
    if "smooth" in steps and not weight_only(options):
        before.append(SmoothActivations(scheme, _smoothing_rule(options, explicit=asked is not None)))
    if "fit" in steps or "bias" in steps:
        before.append(KeepFloatReference())
    if weight_only(options):
        return before, after  # fit and bias run inside the weight-only quantization step (weight_only_recovery)
    if "fit" in steps:
        after.append(FitQuantizedWeights())
    if "bias" in steps:
        after.append(CorrectBias())
    return before, after


def _smoothing_rule(options: dict[str, Any], explicit: bool):
    """How SmoothActivations should simulate this model's quantization, or None to skip it: the mode ``auto`` would
    choose (``recipe_quantize.choose_mode``); only dynamic unless asked for (``--recover smooth``: static too)."""
    from .recipe_quantize import choose_mode

    requested = options.get("quantize") or "auto"

    def quantized_as(model, has_data: bool) -> str | None:
        mode = choose_mode(model, requested, has_data)
        return mode if mode == "dynamic" or (explicit and mode == "static") else None

    return quantized_as


def weight_only_recovery(options: dict[str, Any], default: tuple[str, ...] | None = None) -> list[Pass | FixedPoint]:
    """The recovery steps after weight-only quantization (``fit``, ``bias``), for ``options["recover"]`` or, unset,
    ``default`` (else the weight-only rule); ``recover_steps`` puts KeepFloatReference before quantization for them.
    """
    from onnxopt.passes.correct_bias import CorrectBias
    from onnxopt.passes.fit_quantized_weights import FitQuantizedWeights

    if (options.get("quantize") or "auto") == "none":
        return []
    asked = parse_recover(options.get("recover"))
    steps = asked if asked is not None else default if default is not None else _weight_only_default(options)
    return [*([FitQuantizedWeights()] if "fit" in steps else []), *([CorrectBias()] if "bias" in steps else [])]
