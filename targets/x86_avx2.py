"""x86-avx2: onnxruntime's CPU provider on x86-64 without VNNI (AVX2, or AVX-512 without VNNI).

Scheme: U8S8 in QDQ form with 7-bit weights (``reduce_range``: int8 weights in [-64, 63], uint8 asymmetric
activations per tensor, int8 symmetric per-channel weights).

Why: without VNNI, onnxruntime's U8S8 kernels multiply with VPMADDUBSW, which adds two u8 x s8 products into a
saturating int16: 255 x 127 x 2 = 64770 > 32767. Full-range weights saturate, 7-bit weights cannot
(255 x 64 x 2 = 32640). onnxruntime's quantization docs give the same two ways out (reduce_range or U8U8), and its
x86 U8S8 precision fix (microsoft/onnxruntime#12088) converts U8S8 to U8U8 only when a weight leaves [-64, 63].
Measured on the VNNI host (see ``x86_vnni``): U8U8 is 1.5-1.7x slower than U8S8 (resnet18 44.3 vs 26.6 ms, bert 1.06 vs
0.69 ms), while 7-bit weights cost little fidelity (cosine resnet18 0.99968 vs 0.99987, mobilenetv2 0.99764 vs
0.99846, bert 0.99848 vs 0.99878) and run the same U8S8 kernels. Measured on an AVX2-only AMD EPYC (zoo models,
8 calibration samples, min cosine over 3 held-out inputs in onnxruntime there): full-range U8S8 (the x86-vnni
scheme) mobilenetv2 0.99393 (0.99870 in the spec's arithmetic: the loss is the saturation), 7-bit weights 0.99765;
resnet18 0.99982 vs 0.99961. REFERENCE.md's published figures (ResNet-50 74.76% on VNNI vs 68.95% without,
full-range U8S8) show what reduce_range avoids.

Lint: the x86 rules (``x86_vnni``) under the ``x86-avx2`` prefix, plus

- ``x86-avx2-saturation``: a weighted op with uint8 activations whose int8 weights leave [-64, 63] (the
  VPMADDUBSW int16 intermediate saturates; source: onnxruntime#12088 and the quantization docs' reduce_range).

Without calibration data: dynamic quantization of MatMul/Gemm weights (7-bit) where the quantizer offers it.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.host import HostInfo
from onnxopt.quant_scheme import QuantScheme, TensorQuant

from .base import Violation
from .cost_model import ORT_AVX2
from .qdq_lint import iter_views, node_label, weighted_inputs
from .x86_vnni import X86Vnni

NO_CALIBRATION = "x86-avx2 without calibration data: dynamic int8 quantization (7-bit weights) of MatMul/Gemm only"


def rule_saturation(model: onnx.ModelProto, prefix: str = "x86-avx2") -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            wi = weighted_inputs(node, view)
            if (wi is None or wi.data_dq is None or wi.data_dq.dtype != "uint8" or wi.weight_value is None
                    or wi.weight_value.dtype != np.int8 or not wi.weight_value.size):
                continue
            lo, hi = int(wi.weight_value.min()), int(wi.weight_value.max())
            if lo < -64 or hi > 63:
                out.append(Violation(f"{prefix}-saturation", node_label(node, view),
                                     f"u8 activations x int8 weights in [{lo}, {hi}]: VPMADDUBSW saturates without "
                                     "VNNI; use 7-bit weights [-64, 63] (reduce_range) or U8U8"))
    return out


class X86Avx2(X86Vnni):
    name = "x86-avx2"
    cost_model = ORT_AVX2
    aliases = ()
    description = "onnxruntime CPU on x86-64 without VNNI: QDQ U8S8 with 7-bit (reduce_range) per-channel weights"
    scheme = QuantScheme(
        activations=TensorQuant(dtype="uint8", symmetric=False),
        weights=TensorQuant(dtype="int8", symmetric=True, per_channel=True, reduce_range=True),
        extra={"matmulnbits_accuracy_level": 4},  # --weights int4/...: MatMulNBits, int8 compute (AVX2 dot products)
    )
    no_calibration = NO_CALIBRATION
    rules = (*X86Vnni.rules, rule_saturation)
    prefix = "x86-avx2"

    def host_mismatch(self, host: HostInfo) -> str | None:
        """Only an x86 host with avx2 and without VNNI: a VNNI host does not saturate in VPMADDUBSW and runs int8
        faster, so it does not reproduce an AVX2 host's int8 behaviour."""
        if host.arch != "x86_64":
            return f"this host is {host.arch}, not x86-64"
        if host.vnni:
            return f"this host ({host.cpu}) has VNNI: its int8 runs faster and does not saturate as {self.name}'s"
        if not host.features_known:
            return f"this host's CPU features are unknown ({host.note})"
        if not host.has("avx2"):
            return f"this host ({host.cpu}) has no avx2"
        return None
