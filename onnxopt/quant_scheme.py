"""QuantScheme: what a quantizer should produce, as data. Targets define one each; passes read it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DTYPE_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "int4": (-8, 7),
    "uint4": (0, 15),
}


@dataclass(frozen=True)
class TensorQuant:
    """How one class of tensors (activations, weights) is quantized."""

    dtype: str = "int8"
    symmetric: bool = True
    per_channel: bool = False
    reduce_range: bool = False  # 7-bit values, for the VPMADDUBSW saturation path on x86 without VNNI
    narrow_range: bool = False  # [-127, 127] instead of [-128, 127] (TensorRT weights)

    @property
    def qrange(self) -> tuple[int, int]:
        lo, hi = DTYPE_RANGES[self.dtype]
        if self.reduce_range:
            lo, hi = (lo // 2, hi // 2) if lo < 0 else (0, hi // 2)
        if self.narrow_range and lo < 0:
            lo = -hi
        return lo, hi

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype) if self.dtype in ("int8", "uint8", "int16", "uint16") else np.dtype("int8")


@dataclass(frozen=True)
class QuantScheme:
    """The whole recipe: activation and weight formats, which ops, what stays float."""

    activations: TensorQuant = TensorQuant(dtype="uint8", symmetric=False)
    weights: TensorQuant = TensorQuant(dtype="int8", symmetric=True, per_channel=True)
    op_types: frozenset[str] = frozenset({
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool",
        "Concat", "Relu", "Clip", "Resize", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu",
    })
    keep_float: frozenset[str] = frozenset({"Softmax", "LayerNormalization", "Erf", "Gelu"})
    exclude_nodes: frozenset[str] = frozenset()
    residual_skip_only: bool = False  # on Add, Q/DQ on the skip input only (TensorRT)
    share_concat_scale: bool = True
    quantize_outputs: bool = True  # Q/DQ on op outputs (False for TensorRT)
    bias_int32: bool = True
    min_opset: int = 13
    extra: dict[str, object] = field(default_factory=dict)
