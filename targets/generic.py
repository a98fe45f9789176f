"""generic: standard ONNX QDQ with no target-specific rules."""

from __future__ import annotations

from onnxopt.host import HostInfo
from onnxopt.quant_scheme import QuantScheme, TensorQuant

from .base import Target
from .cost_model import ORT_VNNI


class Generic(Target):
    name = "generic"
    cost_model = ORT_VNNI  # onnxruntime CPU, the usual runtime of a plain QDQ model
    description = "standard ONNX QDQ (u8 activations, s8 per-channel weights); no target-specific rules"
    scheme = QuantScheme(
        activations=TensorQuant(dtype="uint8", symmetric=False),
        weights=TensorQuant(dtype="int8", symmetric=True, per_channel=True),
    )

    def host_mismatch(self, host: HostInfo) -> str | None:
        """generic names no CPU: a timing here would stand for no target (``--target host`` times on this one)."""
        return "target generic names no CPU; --target host times int8 for this machine's own target"
