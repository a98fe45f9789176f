"""x86-vnni (alias x86): onnxruntime's CPU provider on x86-64 with AVX-512 VNNI / AVX-VNNI.

Scheme: U8S8 in QDQ form - uint8 asymmetric activations (per tensor), int8 symmetric per-channel weights, full
8-bit range (VNNI's VPDPBUSD accumulates u8 x s8 products in int32, so nothing saturates).

Measured here (this machine: Xeon with avx512_vnni and avx_vnni; onnxruntime 1.32 CPU provider, 1 thread, batch
1, onnxruntime ``quantize_static`` QDQ per-channel, 16 calibration samples; the machine was shared, so absolute
times are noisy, the ordering held on every model):

| model       | FP32 ms | U8S8 ms (cos)    | S8S8 ms (cos)    | U8U8 ms (cos)    | U8S8 7-bit w ms (cos) |
|-------------|---------|------------------|------------------|------------------|-----------------------|
| resnet18    | 70.1    | 26.6 (0.99987)   | 61.7 (0.99986)   | 44.3 (0.99988)   | 16.4 (0.99968)        |
| mobilenetv2 | 16.8    | 7.25 (0.99846)   | 5.52 (0.99850)   | 11.0 (0.99850)   | 3.22 (0.99764)        |
| bert        | 1.27    | 0.69 (0.99878)   | 5.19 (0.99878)   | 1.06 (0.99877)   | 0.67 (0.99848)        |

U8S8 is the fast format on VNNI (S8S8 is 2.3x slower on resnet18 and 7.5x on bert; U8U8 1.5-1.7x slower) with
the same fidelity; 7-bit weights buy no speed here (same kernels, the differences are load noise) and lose
fidelity (mobilenetv2 0.99846 -> 0.99764), so x86-vnni keeps full-range weights. This contradicts the general
advice of onnxruntime's quantization docs ("S8S8 with QDQ is the default on x86-64"): measured, we follow the
measurement. Re-measure with ``python bench/targets.py``.

The fusions onnxruntime's CPU provider recognises stay intact: the scheme keeps LayerNormalization, Softmax,
Erf/Gelu float (the quantizer's ``keep_float``), so the LayerNorm / GELU / attention fusions still match, and
Relu/Clip after a quantized op share its output range so the QDQ Conv+Relu fusion applies.

Lint (sources: onnxruntime docs "Quantize ONNX models" - data type selection and the QDQ format; the
measurement above):

- ``x86-constant-qparams``: scales and zero points are constants (onnxruntime's QDQ selectors only fuse
  node groups whose Q/DQ parameters are constant initializers);
- ``x86-activation-per-tensor``: activations per tensor (QLinearConv/QLinearMatMul take a scalar x scale);
- ``x86-qoperator-s8s8``: no QLinearConv/QLinearMatMul with int8 activations ("S8S8 with QOperator format is
  slow on x86-64 CPUs and should be avoided in general");
- ``x86-activation-dtype``: the data input of Conv/MatMul/Gemm is uint8 (measured above: int8 activations run
  2-7x slower in onnxruntime's QDQ path on this machine).

Without calibration data: dynamic quantization of MatMul/Gemm weights where the quantizer offers it, else float.
"""

from __future__ import annotations

import logging
from typing import Any

import onnx

from onnxopt.host import HostInfo
from onnxopt.pass_manager import FixedPoint, Pass
from onnxopt.quant_scheme import QuantScheme, TensorQuant

from .base import Target, Violation
from .cost_model import ORT_VNNI
from .qdq_lint import (
    constant_qparams,
    iter_views,
    node_label,
    per_tensor_activations,
    qdq_info,
    weighted_inputs,
)

log = logging.getLogger(__name__)
NO_CALIBRATION = "x86 without calibration data: dynamic int8 quantization of MatMul/Gemm weights only"


def rule_constant_qparams(model: onnx.ModelProto, prefix: str = "x86") -> list[Violation]:
    return constant_qparams(model, f"{prefix}-constant-qparams")


def rule_activation_per_tensor(model: onnx.ModelProto, prefix: str = "x86") -> list[Violation]:
    return per_tensor_activations(model, f"{prefix}-activation-per-tensor")


def rule_qoperator_s8s8(model: onnx.ModelProto, prefix: str = "x86") -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            if node.op_type in ("QLinearConv", "QLinearMatMul"):
                t = view.elem_type(node.input[0])
                if t == onnx.TensorProto.INT8:
                    out.append(Violation(f"{prefix}-qoperator-s8s8", node_label(node, view),
                                         "S8S8 in QOperator form is slow on x86-64; use QDQ with uint8 activations"))
    return out


def rule_activation_dtype(model: onnx.ModelProto, prefix: str = "x86") -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            wi = weighted_inputs(node, view)
            if wi is None or wi.data_dq is None or wi.data_dq.dtype in ("uint8", "?"):
                continue
            out.append(Violation(f"{prefix}-activation-dtype", node_label(node, view),
                                 f"data input quantized to {wi.data_dq.dtype}; uint8 activations are the fast "
                                 "path of onnxruntime's x86 kernels (U8S8)"))
    return out


class X86Vnni(Target):
    name = "x86-vnni"
    cost_model = ORT_VNNI
    aliases = ("x86",)
    description = "onnxruntime CPU on x86-64 with VNNI: QDQ U8S8, per-channel full-range int8 weights"
    scheme = QuantScheme(
        activations=TensorQuant(dtype="uint8", symmetric=False),
        weights=TensorQuant(dtype="int8", symmetric=True, per_channel=True),
        extra={"matmulnbits_accuracy_level": 4},  # --weights int4/...: MatMulNBits, int8 compute (VNNI dot products)
    )
    no_calibration = NO_CALIBRATION
    rules = (rule_constant_qparams, rule_activation_per_tensor, rule_qoperator_s8s8, rule_activation_dtype)
    prefix = "x86"

    def host_mismatch(self, host: HostInfo) -> str | None:
        """Only a VNNI x86 host runs VPDPBUSD: an AVX2 host's int8 is slower and saturates (VPMADDUBSW)."""
        if host.arch != "x86_64":
            return f"this host is {host.arch}, not x86-64"
        if host.vnni:
            return None
        if not host.features_known:
            return f"this host's CPU features are unknown ({host.note})"
        return f"this host ({host.cpu}) has no avx512_vnni or avx_vnni, so its int8 kernels are not {self.name}'s"

    def lowering(self, options: dict[str, Any]) -> list[Pass | FixedPoint]:
        if options.get("calibration") is None:  # bool() of a CalibrationDataReader raises
            log.info(self.no_calibration)
        return []

    def lint(self, model: onnx.ModelProto) -> list[Violation]:
        return [v for rule in self.rules for v in rule(model, self.prefix)]


__all__ = ["X86Vnni", "qdq_info"]
