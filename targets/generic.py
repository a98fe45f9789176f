"""generic: standard ONNX with no target-specific rules — canonicalization only (quantization comes later)."""

from __future__ import annotations

from typing import Any

import onnx

from onnxopt.pass_manager import FixedPoint, Pass
from .base import Target, Violation


class Generic(Target):
    name = "generic"
    description = "standard ONNX, canonicalized; no target-specific rules"

    def pipeline(self, options: dict[str, Any]) -> list[Pass | FixedPoint]:
        from onnxopt.passes.canonicalize import canonicalize

        return canonicalize(options)

    def lint(self, model: onnx.ModelProto) -> list[Violation]:
        return []
