"""What a target is: a QuantScheme, a pipeline of passes built from the user's options, and a lint."""

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
    """Base class. Subclasses set ``name``, ``aliases``, ``scheme`` and implement ``pipeline`` and ``lint``."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    scheme: ClassVar[QuantScheme | None] = None

    def pipeline(self, options: dict[str, Any]) -> list[Pass | FixedPoint]:  # pragma: no cover - interface
        raise NotImplementedError

    def lint(self, model: onnx.ModelProto) -> list[Violation]:
        return []
