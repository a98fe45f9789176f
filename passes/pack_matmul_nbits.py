"""PackMatMulNBits: DequantizeLinear(4-bit constant) -> MatMul / Gemm -> one com.microsoft.MatMulNBits."""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import Model, constant_value, iter_graphs, producer
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.weight_formats import Encoded, WeightSpec

from ._qdq import _Names
from ._qdq_layers import _stored
from ._weight_writer import matmul_nbits

log = logging.getLogger(__name__)


@register_pass
class PackMatMulNBits(Pass):
    """Pack weight-only 4-bit MatMul / Gemm layers that are still in decoder form into MatMulNBits.

    The weight-only recipe (``targets/recipe_quantize.weight_steps``) runs it after the recovery steps
    (FitQuantizedWeights, CorrectBias), which fit weights, scales and biases in the DequantizeLinear form:
    QuantizeWeights then writes the decoder form, and this pass gives the onnxruntime CPU targets the same
    MatMulNBits (with their ``accuracy_level``) QuantizeWeights would have written. Lossless: the packed codes,
    scales and zero points are the decoder's, exactly (at accuracy level 4 onnxruntime computes with int8
    activations, as it does for the MatMulNBits QuantizeWeights writes).

    Rewrites: a MatMul, or a Gemm with transA = transB = 0, alpha = beta = 1 and no bias or a 1-D constant bias of
    N, whose weight (input 1, [K, N]) is a DequantizeLinear read by that node only, of constant int4 / uint4 values
    with constant scales per output channel (axis 1) or in blocks along K (axis 0, ``block_size``), and constant
    zero points (none, or all zero for int4: symmetric) -> one MatMulNBits, bias as its bias input.

    Declines (each in ctx.declines): such a layer whose DequantizeLinear has another reader, another axis, non-
    constant inputs, a Gemm with transposes, alpha/beta or a bias that is not a 1-D constant of N. Layers whose
    weight is not a 4-bit DequantizeLinear (int8, int2, codebooks, float) are not looked at.
    """

    lossless = True

    def __init__(self, accuracy_level: int = 4) -> None:
        self.accuracy_level = int(accuracy_level)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        namer = _Names(model.graph)
        packed = 0
        for g in iter_graphs(model.graph):
            touched = False
            for node in list(g.nodes):
                if node.op not in ("MatMul", "Gemm") or (node.domain or "") not in ("", "ai.onnx"):
                    continue
                if len(node.inputs) < 2:
                    continue
                dq = producer(node.inputs[1])
                if dq is None or dq.op != "DequantizeLinear":
                    continue
                values = _stored(dq.inputs[0])  # never through gs's .values: it would export int4 a byte each
                if values is None or values.dtype.name not in ("int4", "uint4"):
                    continue
                got = self._encoded(node, dq, values)
                if isinstance(got, str):
                    ctx.decline(self.name, f"{node.op} '{node.name}'", f"{got}: decoder form kept")
                    continue
                k, n = values.shape
                bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
                matmul_nbits(g, node, got, k, n, self.accuracy_level, namer, bias)
                packed += 1
                touched = True
            if touched:
                g.cleanup(remove_unused_graph_inputs=False, remove_unused_node_outputs=False).toposort()
        if packed:
            log.info("packed %d weight-only layers into MatMulNBits", packed)
        return PassResult(packed > 0, {"packed": packed})

    @staticmethod
    def _encoded(node: gs.Node, dq: gs.Node, values: np.ndarray) -> Encoded | str:
        """The weight as QuantizeWeights' ``Encoded`` ([K, N], input axis 0), or why it cannot be packed."""
        if values.ndim != 2:
            return f"weight of rank {values.ndim}"
        if len(dq.outputs[0].outputs) != 1:
            return "the weight's DequantizeLinear has other readers"
        k, n = values.shape
        if node.op == "Gemm":
            a = node.attrs
            if a.get("transA", 0) or a.get("transB", 0):
                return "Gemm with transA/transB"
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                return "Gemm with alpha/beta != 1"
            if len(node.inputs) > 2 and node.inputs[2].name:
                b = constant_value(node.inputs[2])
                if b is None or np.asarray(b).shape != (n,):
                    return "Gemm bias is not a 1-D constant of N"
        scale = constant_value(dq.inputs[1]) if len(dq.inputs) > 1 else None
        zp = constant_value(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2].name else None
        if scale is None or (len(dq.inputs) > 2 and dq.inputs[2].name and zp is None):
            return "scale or zero point is not a constant"
        axis = int(dq.attrs.get("axis", 1)) % 2
        block = int(dq.attrs.get("block_size", 0))
        scale = np.asarray(scale, np.float32)
        if block:
            if axis != 0 or scale.shape != (-(-k // block), n):
                return f"blocked along axis {axis} (MatMulNBits blocks run along K, axis 0)"
        elif scale.shape not in ((n,), ()) or (scale.ndim == 1 and axis != 1):
            return "scale is not per output channel (axis 1) or per tensor"
        scale = np.broadcast_to(scale, (n,)).copy() if not block else scale
        signed = values.dtype.name == "int4"
        if zp is not None:
            zp = np.asarray(zp)
            if signed and not np.any(zp.astype(np.int64)):
                zp = None  # symmetric: MatMulNBits's default zero point is the code offset
            elif signed:
                return "int4 with nonzero zero points"
            else:
                zp = np.broadcast_to(zp, scale.shape).copy()
        elif not signed:
            zp = np.zeros(scale.shape, values.dtype)  # uint4 without zero point: zero point 0
        spec = WeightSpec(kind="int4", block=block or None, asym=not signed)
        return Encoded(spec, values, axis=1 if not block else 0, scale=scale, zero_point=zp, block=block)


__all__ = ["PackMatMulNBits"]
