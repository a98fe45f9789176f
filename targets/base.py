"""What a target is: a QuantScheme, a pipeline of passes built from the user's options, and a lint.

The default pipeline is the same recipe for every target, each step shaped by the target's scheme:
canonicalize -> prune (if asked) -> quantize (per the scheme and options) -> the target's own lowering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import onnx

from onnxopt.pass_manager import FixedPoint, Pass
from onnxopt.quant_scheme import QuantScheme


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
    # whether this machine's CPU can stand in for the target when timing int8 against float (quantize auto)
    measure_on_host: ClassVar[bool] = False

    def pipeline(self, options: dict[str, Any]) -> list[Pass | FixedPoint]:
        from onnxopt.passes.canonicalize import canonicalize

        from .recipe_prune import prune_steps
        from .recipe_quantize import quantize_steps

        options = {**self.default_options(), **options}
        steps: list[Pass | FixedPoint] = list(canonicalize(options))
        steps += prune_steps(options)
        steps += quantize_steps(self.scheme, options)
        steps += self.lowering(options)
        return steps

    def default_options(self) -> dict[str, Any]:
        """Options this target sets unless the user does: the opset it needs, whether to time int8 here."""
        return {"min_opset": self.min_opset, "speed_check": self.measure_on_host}

    def lowering(self, options: dict[str, Any]) -> list[Pass | FixedPoint]:
        """Target-specific rewrites after quantization (none by default)."""
        return []

    def lint(self, model: onnx.ModelProto) -> list[Violation]:
        return []

    def build_command(self, model_path: str) -> str | None:
        """The command that builds a deployable engine from the output, for targets that have one."""
        return None
