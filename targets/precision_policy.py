"""What a target wants from the precision planner: its policy, as one object the planning pass asks.

Why an object: every quantization policy lives in ``targets/`` (which mode, which scheme, which regions a target
treats specially, which formats it runs, when int8 pays), while the planning step is a pass in ``passes/``, which
must not import targets. The recipe builds a ``TargetPolicy`` and hands it to ``PlanPrecision``; the pass calls
its methods (the protocol it needs is ``passes.plan_precision.PrecisionPolicy``).

- ``choose_mode``: static, dynamic or none for this model (``recipe_quantize.choose_mode``'s rule);
- ``scheme_for``: the scheme for this model (TensorRT leaves transformer residual Adds float);
- ``adjust``: regions a target shapes itself (TensorRT's residual Adds: Q/DQ on the shortcut only);
- ``region_rules``: per-region choices made before any measurement (``int8_min_macs``: a Conv with too little work);
- ``ladder``: the next higher format of a region during back-off (``int8 -> float`` by default; with the
  ``precision_formats`` option, e.g. ``int8,a16w8,float``, through int16 activations first);
- ``judge_speed``: the cost model's whole-model verdict (``cost_model``), where the host cannot measure;
- ``variants``: plans to weigh against the budget-feasible one: the cost model's "keep float what does not pay"
  (``CostModel.paying``); ``margin``: how much faster than all-float a plan with int8 must be (0.95);
- ``measure`` / ``time`` / ``time_many``: whether to time int8 against float on this host (it stands for the target
  and the mode is ``auto``), and the timing itself (``recipe_quantize.median_latencies_ms``: interleaved, 1 thread;
  stubbed in tests); ``timing_note``: in auto mode on a host that does not stand for the target, why nothing is
  timed (``speed_check_skip_reason``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from onnxopt.analysis.regions import RegionGraph
from onnxopt.errors import UserError
from onnxopt.ir import Model, iter_graphs
from onnxopt.plan import FLOAT, INT8, MEASURED_BY, RegionPlan, SpeedCheck, format_spec
from onnxopt.quant_scheme import QuantScheme

from .cost_model import SPEEDUP_REQUIRED, CostModel, with_break_even

log = logging.getLogger(__name__)

DEFAULT_FORMATS = (INT8, FLOAT)


class TargetPolicy:
    """The default policy: the onnxruntime-style recipe of ``recipe_quantize`` with a cost model (or none)."""

    def __init__(self, target: str, scheme: QuantScheme, requested: str, options: Mapping[str, Any],
                 cost: CostModel | None = None, measure: bool = False) -> None:
        self.target, self.scheme, self.requested = target, scheme, requested
        self.cost = with_break_even(cost, options.get("int8_min_conv_macs")) if cost is not None else None
        self.measure = bool(measure and requested == "auto")
        # auto mode on a host that does not stand for the target: why int8 is not timed (the report says it)
        self.timing_note = None if self.measure or requested != "auto" else str(
            options.get("speed_check_skip_reason") or "the speed_check option is off")
        self.min_macs = int(options.get("int8_min_macs") or 0)
        self.formats = self._formats(options.get("precision_formats"))

    @staticmethod
    def _formats(spec: str | Sequence[str] | None) -> tuple[str, ...]:
        if not spec:
            return DEFAULT_FORMATS
        names = tuple(s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip())
        for n in names:
            format_spec(n, "--precision-formats")
        if names[-1] != FLOAT or INT8 not in names:
            raise UserError(f"--precision-formats {','.join(names)}: list the formats from int8 up to float, "
                            "e.g. int8,a16w8,float")
        return names

    def choose_mode(self, model: Model, has_data: bool) -> str:
        from . import recipe_quantize

        mode = recipe_quantize.choose_mode(model, self.requested, has_data)
        if mode == "static" and not has_data:
            raise UserError("--quantize static needs calibration data; pass --calib data.npz "
                            "(or use --quantize dynamic, which needs none)")
        if not has_data and self.requested in ("auto", "dynamic"):
            log.warning(recipe_quantize.NO_DATA.format(
                extra=" (dynamic quantization of MatMul/Gemm weights only)" if mode == "dynamic" else ""))
        return mode

    def scheme_for(self, model: Model) -> QuantScheme:
        return self.scheme

    def adjust(self, rg: RegionGraph, model: Model) -> None:
        """Regions this target shapes itself (none by default)."""

    def region_rules(self, rg: RegionGraph) -> dict[str, RegionPlan]:
        """``int8_min_macs`` (off by default): a Conv region with fewer MACs stays float."""
        found: dict[str, RegionPlan] = {}
        if not self.min_macs:
            return found
        for r in rg.regions:
            if any(op in ("Conv", "ConvTranspose") for op in r.op_types) and r.macs is not None \
                    and r.macs < self.min_macs:
                found[r.id] = RegionPlan(FLOAT, f"too little work for int8 to pay off ({r.macs} MACs < "
                                                f"{self.min_macs})")
        return found

    def ladder(self, region: str, fmt: str) -> str | None:
        if fmt not in self.formats:
            return None
        i = self.formats.index(fmt)
        return self.formats[i + 1] if i + 1 < len(self.formats) else None

    def judge_speed(self, rg: RegionGraph, formats: Mapping[str, str]) -> SpeedCheck | None:
        return None if self.cost is None else self.cost.judge(rg, formats)

    def speed_reason(self, check: SpeedCheck, rg: RegionGraph) -> str:
        if check.source == "measured":
            return (f"measured slower or not 5% faster in int8 ({check.int8_ms:.2f} ms against {check.float_ms:.2f} "
                    "ms in float on this machine, onnxruntime, 1 thread); --quantize static forces int8")
        assert self.cost is not None
        return self.cost.reason(check, rg)

    def latency(self, rg: RegionGraph, formats: Mapping[str, str]) -> float | None:
        return None if self.cost is None else self.cost.estimate(rg, formats)

    @property
    def margin(self) -> float:
        return self.cost.required_speedup if self.cost is not None else SPEEDUP_REQUIRED

    def variants(self, rg: RegionGraph, formats: Mapping[str, str]) -> list[tuple[str, dict[str, str]]]:
        """The cost model's "keep float what does not pay" of ``formats`` (none without a cost model, when nothing
        changes, or when the MACs are unknown)."""
        if self.cost is None:
            return []
        paying = self.cost.paying(rg, formats)
        if paying is None or paying == dict(formats):
            return []
        return [(f"keep float what does not pay ({self.cost.name})", paying)]

    def time_many(self, models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray]) -> list[float]:
        """Median ms of each model on ``feed``, interleaved, onnxruntime CPU with 1 thread."""
        from . import recipe_quantize

        return [round(ms, 3) for ms in recipe_quantize.median_latencies_ms(list(models), dict(feed))]

    def host_label(self) -> str | None:
        return _host_label()

    def time(self, float_model: onnx.ModelProto, int8_model: onnx.ModelProto, feed: Mapping[str, np.ndarray]
             ) -> SpeedCheck:
        float_ms, int8_ms = self.time_many([float_model, int8_model], feed)
        kept = "int8" if int8_ms <= SPEEDUP_REQUIRED * float_ms else "float"
        return SpeedCheck(kept, "measured", MEASURED_BY, float_ms=float_ms, int8_ms=int8_ms, host=_host_label())


def _host_label() -> str | None:
    try:
        from onnxopt import host
    except ImportError:  # host detection not installed: the report does not name the host
        return None
    return host.current_host().label()


def _is_transformer(model: Model) -> bool:
    return any(n.op in ("LayerNormalization", "Softmax", "Erf") for g in iter_graphs(model.graph) for n in g.nodes)


class TensorRTPolicy(TargetPolicy):
    """Static Q/DQ only (TensorRT imports no dynamic ops); residual Adds per ``tensorrt_residual``; transformer
    residual Adds float (measured on MiniLM: Q/DQ on them drops cosine to 0.93)."""

    def __init__(self, target: str, scheme: QuantScheme, requested: str, options: Mapping[str, Any],
                 cost: CostModel | None = None, measure: bool = False) -> None:
        if requested == "dynamic":
            raise UserError("--quantize dynamic makes DynamicQuantizeLinear/MatMulInteger, which TensorRT does not "
                            "import; use --quantize static with --calib data.npz, or --quantize none")
        super().__init__(target, scheme, requested, options, cost, measure=False)
        self.timing_note = None  # TensorRT's int8 runs on a GPU: no host stands for it, nothing to say per run

    def choose_mode(self, model: Model, has_data: bool) -> str:
        if self.requested == "none":
            return "none"
        if not has_data:
            if self.requested == "static":
                raise UserError("--quantize static needs calibration data; pass --calib data.npz")
            from .tensorrt import NO_CALIBRATION

            log.warning(NO_CALIBRATION)
            return "none"
        return "static"

    def scheme_for(self, model: Model) -> QuantScheme:
        if _is_transformer(model):
            return replace(self.scheme, op_types=self.scheme.op_types - {"Add"})
        return self.scheme

    def adjust(self, rg: RegionGraph, model: Model) -> None:
        from .tensorrt_residual import residual_skip_regions

        residual_skip_regions(rg)


__all__ = ["DEFAULT_FORMATS", "TargetPolicy", "TensorRTPolicy"]
