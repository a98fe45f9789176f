"""What a target is: a QuantScheme, a pipeline of passes built from the user's options, and a lint.

The default pipeline is the same recipe for every target, each step shaped by the target's scheme:
canonicalize -> prune (if asked) -> [cross-layer equalization] -> plan + quantize (per the scheme, the target's
precision policy and the options) -> [weight fitting, bias correction] (``--recover``, recipe_recover.py) -> the
target's own lowering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import onnx

from onnxopt.host import HostInfo
from onnxopt.pass_manager import FixedPoint, Pass
from onnxopt.quant_scheme import QuantScheme

from .cost_model import CostModel

if TYPE_CHECKING:
    from .precision_policy import TargetPolicy


@dataclass(frozen=True)
class Violation:
    """One rule of a target that a model breaks, said in one line."""

    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.node}: {self.message}"


class Target:
    """Base class. Subclasses set ``name``, ``aliases``, ``scheme``, ``min_opset`` and may override the steps."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    scheme: ClassVar[QuantScheme | None] = None
    min_opset: ClassVar[int] = 13
    # what int8 buys on this target where no host can time it (targets/cost_model.py); None: no speed rule
    cost_model: ClassVar[CostModel | None] = None
    # accuracy-recovery steps (bias, cle, fit, smooth) run unless --recover says otherwise; None: recipe_recover's rule
    recover_default: ClassVar[tuple[str, ...] | None] = None

    def pipeline(self, options: dict[str, Any]) -> list[Pass | FixedPoint]:
        from onnxopt.passes.canonicalize import canonicalize

        from .recipe_prune import prune_steps
        from .recipe_quantize import quantize_steps
        from .recipe_recover import recover_steps, scheme_for_options

        options = {**self.default_options(), **options}
        steps: list[Pass | FixedPoint] = list(canonicalize(options))
        steps += prune_steps(options)
        recover_before, recover_after = recover_steps(scheme_for_options(self.scheme, options), options,
                                                      self.recover_default)
        steps += recover_before  # cross-layer equalization on the float model; the float reference for the rest
        steps += quantize_steps(self.scheme, options, self)
        steps += recover_after  # layer-wise fitting and bias correction to the float reference
        steps += self.lowering(options)
        return steps

    def default_options(self) -> dict[str, Any]:
        """Options this target sets unless the user does: the opset it needs, and whether to time int8 against
        float here (only where this host stands for the target; else ``speed_check_skip_reason`` says why)."""
        from onnxopt import host

        reason = self.host_mismatch(host.current_host())
        opts: dict[str, Any] = {"min_opset": self.min_opset, "speed_check": reason is None}
        if reason is not None:
            opts["speed_check_skip_reason"] = reason
        return opts

    def host_mismatch(self, host: HostInfo) -> str | None:
        """Why ``host`` cannot stand for this target by ISA (its int8 kernels are not the target's, so its timings
        and int8 results would not be the target's), or None when it can. By default no host can."""
        return f"target {self.name} names no CPU that a host could stand for"

    def host_stands_for(self, host: HostInfo) -> bool:
        """Whether ``host`` runs this target's int8 kernels, so that timing int8 on it means something."""
        return self.host_mismatch(host) is None

    def precision_policy(self, options: dict[str, Any]) -> TargetPolicy:
        """What the precision planner asks this target (mode, scheme, regions, formats, cost model, timing)."""
        from .precision_policy import TargetPolicy
        from .recipe_recover import scheme_for_options

        scheme = scheme_for_options(self.scheme or QuantScheme(), options)  # --per-tensor-weights
        return TargetPolicy(self.name, scheme, options.get("quantize") or "auto", options,
                            cost=self.cost_model, measure=bool(options.get("speed_check")))

    def lowering(self, options: dict[str, Any]) -> list[Pass | FixedPoint]:
        """Target-specific rewrites after quantization (none by default)."""
        return []

    def lint(self, model: onnx.ModelProto) -> list[Violation]:
        return []

    def build_command(self, model_path: str) -> str | None:
        """The command that builds a deployable engine from the output, for targets that have one."""
        return None
