"""generic: standard ONNX QDQ with no target-specific rules."""

from __future__ import annotations

from onnxopt.quant_scheme import QuantScheme, TensorQuant

from .base import Target


class Generic(Target):
    name = "generic"
    measure_on_host = True  # no target named: the machine running onnxopt is the best guess of where it runs
    description = "standard ONNX QDQ (u8 activations, s8 per-channel weights); no target-specific rules"
    scheme = QuantScheme(
        activations=TensorQuant(dtype="uint8", symmetric=False),
        weights=TensorQuant(dtype="int8", symmetric=True, per_channel=True),
    )
