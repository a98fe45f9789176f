"""The quantization step of every target's recipe, shaped by the target's QuantScheme and the user's options."""

from __future__ import annotations

from typing import Any

from onnxopt.pass_manager import FixedPoint, Pass
from onnxopt.quant_scheme import QuantScheme


def quantize_steps(scheme: QuantScheme | None, options: dict[str, Any]) -> list[Pass | FixedPoint]:
    """Passes that quantize per ``scheme`` and ``options['quantize']``; empty when the target keeps float."""
    return []
