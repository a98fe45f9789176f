"""The options of one optimize run, typed: one dataclass per concern, shared by the CLI and ``onnxopt.optimize``.

- ``CalibrationOptions``: the samples (anything ``--calib`` accepts, a ``CalibrationDataReader``, an iterable of
  feed dicts, a mapping of stacked arrays), the collector method, how many samples, how many are held back.
- ``QuantizationOptions``: the mode, the weight format, what stays float, the precision plan (given, saved, the
  formats a region backs off along, where its sensitivity analysis runs).
- ``PruningOptions``: structured channel pruning (ratio, criterion, scope, ...) and unstructured sparsity.
- ``RecoveryOptions``: the accuracy-recovery steps after quantization (bias, cle, fit, smooth, or none).
- ``VerificationOptions``: whether and how the result is compared with the input model, and the accuracy budget.
- ``OptimizeOptions``: the target and run-wide settings, holding one of each of the above.

A field left ``None`` means "the target's or the pass's own default", as an unset flag of the CLI does. Every
object checks its values when built (``__post_init__``): a wrong value raises ``UserError`` in one line before any
work starts, with the message the CLI gives for the same flag.

The passes still read a flat dict of string keys (``PassContext.options``). ``OptimizeOptions.pass_options()`` is
the one boundary where the typed objects are flattened into it: each dataclass's ``pass_options()`` yields the keys
it stands for (a field's key is in its metadata). Converting every pass to typed options is out of scope.

``OptimizeOptions.build(target=..., **flat)`` routes flat keyword names (the pass-option keys, which are also the
CLI's argument names: ``quantize``, ``weights``, ``recover``, ``prune``, ``min_cosine`` ...) to their dataclass;
an unknown name raises ``TypeError`` naming it and the accepted ones.
"""

from __future__ import annotations

import difflib
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from onnxopt.errors import UserError

QUANTIZE_MODES = ("auto", "static", "dynamic", "none")
CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")  # onnxopt.calibration.collectors.METHODS
PRUNE_SCOPES = ("layer", "global")
PRUNE_RECONSTRUCT = ("ls", "bias", "none")
PLAN_EXECUTORS = ("process", "thread", "inline")
DEBUG_ENGINES = ("onnxruntime", "reference")


def _opt(key: str | None, default: Any = None, *, flat: str | None = None, factory: Any = None) -> Any:
    """A field whose value goes to the pass option ``key`` (None: read by the pipeline, not by passes); ``flat``:
    its keyword name in ``OptimizeOptions.build`` / ``onnxopt.optimize`` (default: ``key``)."""
    meta = {"key": key, "flat": flat or key}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _check_ranges(**values: Any) -> None:
    """The CLI's numeric ranges (``input_checks.NUMERIC_RANGES``, keyed by argument name) for these values."""
    from onnxopt.input_checks import check_numeric_options

    check_numeric_options(types.SimpleNamespace(**values))


def _number(flag: str, value: Any, kind: type = float) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{flag} {value!r}: expected a number, got {type(value).__name__}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise UserError(f"{flag} {value:g}: expected a whole number")
        return int(value)
    return float(value)


def _choice(flag: str, value: Any, choices: Sequence[str]) -> Any:
    if value is not None and value not in choices:
        raise UserError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    return value


def _names(flag: str, value: Any) -> tuple[str, ...] | None:
    """A list of node/op names: a sequence of str (a single str is one name)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in items):
        raise UserError(f"{flag}: expected names (str), got {items!r}")
    return tuple(items)


class _Group:
    """What the option dataclasses share: their pass-option keys and flat keyword names."""

    def pass_options(self) -> dict[str, Any]:
        """The pass-option keys this object stands for; a field left None is left out (the pass's default)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            key, value = f.metadata.get("key"), getattr(self, f.name)
            if key is not None and value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def flat_names(cls) -> dict[str, str]:
        """flat keyword name -> field name."""
        return {f.metadata["flat"]: f.name for f in fields(cls)}  # type: ignore[arg-type]


@dataclass
class CalibrationOptions(_Group):
    """``data``: an .npz path (sample axis first), a folder of .npz (one feed each), a ``CalibrationDataReader``,
    an iterable of feed dicts or a mapping of stacked arrays (``onnxopt.calibration.open_calibration_data``)."""

    data: Any = _opt("calibration")
    method: str = _opt("calib_method", "minmax")
    samples: int | None = _opt("calib_samples")
    holdout: int | None = _opt("calib_holdout")  # held back for fidelity (default: one in five, at most 32)

    def __post_init__(self) -> None:
        _choice("--calib-method", self.method, CALIB_METHODS)
        self.samples = _number("--calib-samples", self.samples, int)
        self.holdout = _number("calib_holdout", self.holdout, int)
        _check_ranges(calib_samples=self.samples)
        if self.holdout is not None and self.holdout < 0:
            raise UserError(f"calib_holdout {self.holdout}: must be at least 0 (0 holds nothing back)")


@dataclass
class QuantizationOptions(_Group):
    """``mode``: auto (the target decides, measured), static, dynamic or none; ``weights``: a ``--weights`` format
    (int8, int4[:block=N][:asym], ternary, ...); ``plan``: a plan file or ``onnxopt.plan.Plan`` applied as given;
    ``save_plan``: where the plan is written with the model."""

    mode: str = _opt("quantize", "auto")
    weights: str | None = _opt("weights")
    exclude_nodes: tuple[str, ...] | None = _opt("exclude_nodes")
    exclude_ops: tuple[str, ...] | None = _opt("exclude_ops")
    int8_min_conv_macs: float | None = _opt("int8_min_conv_macs")
    fp16: bool | None = _opt("fp16")
    per_tensor_weights: bool | None = _opt("per_tensor_weights")
    plan: Any = _opt("plan")
    precision_formats: str | tuple[str, ...] | None = _opt("precision_formats")
    plan_executor: Any = _opt("plan_executor")  # "process", "thread", "inline" or a concurrent.futures Executor
    save_plan: str | None = _opt(None, flat="save_plan")
    weight_formats: Mapping[str, str] | None = _opt("weight_formats")  # per node name: a --weights format
    weights_embeddings: bool | None = _opt("weights_embeddings")  # --weights also on Gather tables (default on)
    speed_check: bool | None = _opt("speed_check")  # time int8 against float (default: where the host stands for it)

    def __post_init__(self) -> None:
        _choice("--quantize", self.mode, QUANTIZE_MODES)
        if self.weights is not None:
            from onnxopt.weight_formats import parse_weights

            if not isinstance(self.weights, str):
                raise UserError(f"--weights {self.weights!r}: expected a format name such as int8 or int4:block=32")
            parse_weights(self.weights)
        self.exclude_nodes = _names("--exclude-nodes", self.exclude_nodes)
        self.exclude_ops = _names("--exclude-ops", self.exclude_ops)
        self.int8_min_conv_macs = _number("--int8-min-conv-macs", self.int8_min_conv_macs)
        _check_ranges(int8_min_conv_macs=self.int8_min_conv_macs)
        if isinstance(self.plan_executor, str) or self.plan_executor is None:
            _choice("--plan-executor", self.plan_executor, PLAN_EXECUTORS)
        if self.precision_formats is not None:
            from onnxopt.targets.precision_policy import TargetPolicy

            if not isinstance(self.precision_formats, str):
                self.precision_formats = _names("--precision-formats", self.precision_formats)
            TargetPolicy._formats(self.precision_formats)  # the parser the planner uses
        if self.plan is not None and not isinstance(self.plan, str):
            from onnxopt.plan import Plan

            if not isinstance(self.plan, Plan):
                raise UserError(f"--plan: expected a plan file or an onnxopt.plan.Plan, got {type(self.plan).__name__}")
        for flag, value in (("--fp16", self.fp16), ("--per-tensor-weights", self.per_tensor_weights),
                            ("weights_embeddings", self.weights_embeddings), ("speed_check", self.speed_check)):
            if value is not None and not isinstance(value, bool):
                raise UserError(f"{flag} {value!r}: expected True or False")


@dataclass
class RecoveryOptions(_Group):
    """``recover``: the recovery steps, a comma list or sequence of bias, cle, fit, smooth; ``()`` / "none" for none;
    None for the target's default (bias; cle with per-tensor weights; fit with 4-bit weights)."""

    recover: tuple[str, ...] | None = _opt("recover")

    def __post_init__(self) -> None:
        from onnxopt.targets.recipe_recover import parse_recover

        if isinstance(self.recover, (list, tuple)) and not self.recover:
            self.recover = ()
        else:
            self.recover = parse_recover(self.recover)

    def pass_options(self) -> dict[str, Any]:
        if self.recover is None:
            return {}
        return {"recover": ",".join(self.recover) or "none"}  # the text --recover takes (parse_recover reads it)


@dataclass
class PruningOptions(_Group):
    """``ratio``: the fraction of FLOPs removed by structured channel pruning; ``sparsity``: the fraction of weights
    zeroed by unstructured magnitude pruning; the rest tune the channel pruning (defaults: the pass's)."""

    ratio: float | None = _opt("prune")
    criterion: str = _opt("prune_criterion", "l1")
    exclude: tuple[str, ...] | None = _opt("prune_exclude")
    sparsity: float | None = _opt("sparsity")
    scope: str | None = _opt("prune_scope")
    round_to: int | None = _opt("prune_round_to")
    min_keep: float | None = _opt("prune_min_keep")
    reconstruct: str | None = _opt("prune_reconstruct")

    def __post_init__(self) -> None:
        self.ratio = _number("--prune", self.ratio)
        self.sparsity = _number("--sparsity", self.sparsity)
        self.round_to = _number("--prune-round-to", self.round_to, int)
        self.min_keep = _number("--prune-min-keep", self.min_keep)
        _check_ranges(prune=self.ratio, sparsity=self.sparsity, prune_round_to=self.round_to,
                      prune_min_keep=self.min_keep)
        if not isinstance(self.criterion, str):
            raise UserError(f"--prune-criterion {self.criterion!r}: expected a name such as l1")
        if self.criterion.lower() != "l1":
            from onnxopt.passes.prune_channels import CRITERIA

            _choice("--prune-criterion", self.criterion.lower(), CRITERIA)
        _choice("--prune-scope", self.scope, PRUNE_SCOPES)
        _choice("--prune-reconstruct", self.reconstruct, PRUNE_RECONSTRUCT)
        self.exclude = _names("--prune-exclude", self.exclude)


@dataclass
class VerificationOptions(_Group):
    """How the result is judged against the input model: lossless pipelines within ``rtol``/``atol``, lossy ones
    by the budget (``budget`` terms such as "cosine:0.99", "top1:0.99"; default cosine ``min_cosine``, top-1 for
    probabilities; or ``metric`` = a callable or "module:function" scoring an onnxruntime session, with
    ``max_drop``). ``inputs``: an .npz verified on; ``allow_mismatch``: write the model even past the budget."""

    verify: bool = _opt(None, True, flat="verify")
    rtol: float = _opt(None, 1e-3, flat="rtol")
    atol: float = _opt(None, 1e-4, flat="atol")
    min_cosine: float = _opt(None, 0.99, flat="min_cosine")
    allow_mismatch: bool = _opt(None, False, flat="allow_mismatch")
    inputs: str | None = _opt(None, flat="inputs")
    budget: list[str] = _opt(None, flat="budget", factory=list)
    metric: Any = _opt(None, flat="metric")
    max_drop: float | None = _opt(None, flat="max_drop")

    def __post_init__(self) -> None:
        self.rtol = _number("--rtol", self.rtol)
        self.atol = _number("--atol", self.atol)
        self.min_cosine = _number("--min-cosine", self.min_cosine)
        self.max_drop = _number("--max-drop", self.max_drop)
        _check_ranges(rtol=self.rtol, atol=self.atol, min_cosine=self.min_cosine)
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise UserError(f"--max-drop {self.max_drop:g}: must be a finite number >= 0")
        if self.budget is None:
            self.budget = []
        elif isinstance(self.budget, str):
            self.budget = [self.budget]
        else:
            self.budget = list(self.budget)
        if not all(isinstance(b, str) for b in self.budget):
            raise UserError(f"--budget {self.budget!r}: expected terms such as 'cosine:0.99' (str)")
        from onnxopt.budget import CustomMetric

        if self.metric is not None and not isinstance(self.metric, (str, CustomMetric)) and not callable(self.metric):
            raise UserError(f"--metric {self.metric!r}: give MODULE:FUNCTION or a callable(session) -> float")
        self.make_budget()  # a malformed budget or metric fails here, before any work

    def make_budget(self) -> Any:
        """The ``onnxopt.budget.Budget`` these options ask for (UserError in one line when malformed)."""
        from onnxopt.budget import Budget, CustomMetric

        custom = self.metric
        if isinstance(custom, str):
            custom = CustomMetric.from_spec(custom, self.max_drop)
        elif callable(custom) and not isinstance(custom, CustomMetric):
            if self.max_drop is None:
                raise UserError("metric=... needs max_drop=D (how much the metric may fall)")
            custom = CustomMetric(custom, float(self.max_drop), getattr(custom, "__name__", "metric"))
        return Budget.parse(self.budget, self.min_cosine, custom)


GROUPS: dict[str, type[_Group]] = {"calibration": CalibrationOptions, "quantization": QuantizationOptions,
                                   "pruning": PruningOptions, "recovery": RecoveryOptions,
                                   "verification": VerificationOptions}


@dataclass
class OptimizeOptions:
    """Everything one run takes. ``min_opset``: the least opset to upgrade to (default: the target's);
    ``debug``: check and verify after every pass that changed the model (on ``debug_engine``); ``dump_dir``: the
    model after every change; ``check``: onnx.checker full check of the result."""

    target: str = "generic"
    min_opset: int | None = None
    keep_initializer_inputs: bool = False
    debug: bool = False
    debug_engine: str = "onnxruntime"
    progress: bool = False
    dump_dir: str | None = None
    check: bool = True
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)
    pruning: PruningOptions = field(default_factory=PruningOptions)
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)
    verification: VerificationOptions = field(default_factory=VerificationOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target:
            raise UserError(f"--target {self.target!r}: give a target name, e.g. generic, x86-avx2, arm, tensorrt")
        self.min_opset = _number("--opset", self.min_opset, int)
        _check_ranges(opset=self.min_opset)
        _choice("--debug-engine", self.debug_engine, DEBUG_ENGINES)
        for name, cls in GROUPS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"OptimizeOptions.{name} must be a {cls.__name__}, got {type(getattr(self, name))}")

    def make_budget(self) -> Any:
        return self.verification.make_budget()

    def pass_options(self) -> dict[str, Any]:
        """The flat ``PassContext.options`` the passes read (the one place typed options become string keys)."""
        opts: dict[str, Any] = {"keep_initializer_inputs": self.keep_initializer_inputs}
        for name in GROUPS:
            opts.update(getattr(self, name).pass_options())
        if self.min_opset is not None:
            opts["min_opset"] = self.min_opset
        return opts

    @classmethod
    def build(cls, target: str = "generic", **flat: Any) -> OptimizeOptions:
        """Options from keyword names: this class's own fields, a whole group (``quantization=QuantizationOptions(
        ...)``; ``calibration=`` may also be the data itself), or any group's flat name (``quantize="static"``,
        ``weights="int4"``, ``recover="fit"``, ``prune=0.3``, ``min_cosine=0.98``, ``budget="top1:0.99"``), which
        replaces that field of the group. An unknown name raises TypeError naming it and the accepted ones."""
        own = {f.name for f in fields(cls)} - set(GROUPS) - {"target"}
        route = {flat_name: (group, fname) for group, gcls in GROUPS.items()
                 for flat_name, fname in gcls.flat_names().items()}
        top: dict[str, Any] = {}
        given: dict[str, Any] = {}
        per: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        for name, value in flat.items():
            if name in GROUPS and (value is None or isinstance(value, GROUPS[name])):
                given[name] = value
            elif name == "calibration":
                per["calibration"]["data"] = value
            elif name in own:
                top[name] = value
            elif name in route:
                group, fname = route[name]
                per[group][fname] = value
            else:
                accepted = sorted(own | set(route) | set(GROUPS) | {"target"})
                close = difflib.get_close_matches(name, accepted, n=1)
                raise TypeError(f"unknown option {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                                + f"; accepted: {', '.join(accepted)}")
        groups: dict[str, Any] = {}
        for group, gcls in GROUPS.items():
            base = given.get(group)
            groups[group] = (replace(base, **per[group]) if base is not None else gcls(**per[group]))
        return cls(target=target, **top, **groups)


def options_from_args(args: Any, progress: bool = False) -> OptimizeOptions:
    """The typed options of ``onnxopt optimize``'s parsed arguments (``args``): the objects ``onnxopt.optimize``
    builds from the same settings. A malformed value (``--weights``, ``--recover``, ``--budget``, ...) fails here,
    before any work, in one line."""
    return OptimizeOptions(
        target=args.target, min_opset=args.opset, keep_initializer_inputs=args.keep_initializer_inputs,
        debug=args.debug, debug_engine=args.debug_engine, progress=progress, dump_dir=args.dump_dir,
        calibration=CalibrationOptions(data=args.calib, method=args.calib_method, samples=args.calib_samples),
        quantization=QuantizationOptions(
            mode=args.quantize, weights=args.weights, exclude_nodes=args.exclude_nodes or None,
            exclude_ops=args.exclude_ops or None, int8_min_conv_macs=args.int8_min_conv_macs,
            fp16=args.fp16 or None, per_tensor_weights=args.per_tensor_weights or None, plan=args.plan,
            precision_formats=args.precision_formats,
            plan_executor=args.plan_executor or "process",  # the console entry point can spawn workers
            save_plan=args.save_plan),
        pruning=PruningOptions(
            ratio=args.prune, criterion=args.prune_criterion, exclude=args.prune_exclude or None,
            sparsity=args.sparsity, scope=args.prune_scope, round_to=args.prune_round_to,
            min_keep=args.prune_min_keep, reconstruct=args.prune_reconstruct),
        recovery=RecoveryOptions(recover=args.recover),
        verification=VerificationOptions(
            verify=not args.no_verify, rtol=args.rtol, atol=args.atol, min_cosine=args.min_cosine,
            allow_mismatch=args.allow_mismatch, inputs=args.inputs, budget=args.budget or [], metric=args.metric,
            max_drop=args.max_drop),
    )
