"""Writes the decoder of an encoded weight (``onnxopt.weight_formats.Encoded``) into a graph, or a MatMulNBits.

- affine formats: ``DequantizeLinear(values, scale[, zero_point])`` with ``axis`` and, when blocked, ``block_size``;
- codebook formats: ``Cast(indices -> int32) -> Gather(codebook) [-> Mul(per-channel scale)]`` (Gather takes only
  int32/int64 indices, the stored ones are uint4/uint8);
- ``matmul_nbits``: a MatMul/Gemm whose weight is affine becomes one ``com.microsoft.MatMulNBits`` (onnxruntime's
  contrib op): B as uint8 [N, blocks, block_size x bits / 8] (unsigned codes, the first in the lowest bits), scales
  [N, blocks], packed zero points for asymmetric formats (symmetric ones use the op's default 2^(bits-1)), the Gemm's
  bias as its bias input, ``accuracy_level`` as the target asks. Per-channel weights use one block of the next
  power of two >= K (at least 16; 2-bit blocks at most 256, the channel's scale repeated), padded with zero codes.

Sub-byte values (int4/uint4/int2) go into the graph as ONNX tensors packed by ``onnx.numpy_helper`` (onnx-graphsurgeon
would write one byte per value). A helper module (leading underscore): not a pass.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxopt.weight_formats import Encoded, pack_bits

SUB_BYTE = {"int4", "uint4", "int2", "uint2"}


def constant(name: str, values: np.ndarray) -> gs.Constant:
    """A graph constant; sub-byte ml_dtypes arrays are packed the ONNX way."""
    values = np.asarray(values)
    if values.dtype.name in SUB_BYTE:
        return gs.Constant(name, LazyValues(numpy_helper.from_array(values, name)))
    return gs.Constant(name, np.ascontiguousarray(values))


def decoder(graph: gs.Graph, enc: Encoded, base: str, namer, shape: list[int]) -> gs.Variable:
    """Append the nodes that decode ``enc`` to ``graph``; returns the float32 weight tensor they produce."""
    out = gs.Variable(namer(f"{base}_decoded"), dtype=np.float32, shape=list(shape))
    if enc.codebook is None:
        inputs = [constant(namer(f"{base}_quantized"), enc.values), constant(namer(f"{base}_scale"), enc.scale)]
        if enc.zero_point is not None:
            inputs.append(constant(namer(f"{base}_zero_point"), enc.zero_point))
        attrs = {"axis": int(enc.axis), **({"block_size": int(enc.block)} if enc.block else {})}
        graph.nodes.append(gs.Node("DequantizeLinear", namer(f"{base}_DequantizeLinear"), attrs=attrs,
                                   inputs=inputs, outputs=[out]))
        return out
    idx = gs.Variable(namer(f"{base}_indices_int32"), dtype=np.int32, shape=list(shape))
    graph.nodes.append(gs.Node("Cast", namer(f"{base}_Cast"), attrs={"to": TensorProto.INT32},
                               inputs=[constant(namer(f"{base}_indices"), enc.values)], outputs=[idx]))
    looked = out if enc.scale is None else gs.Variable(namer(f"{base}_unscaled"), dtype=np.float32,
                                                       shape=list(shape))
    graph.nodes.append(gs.Node("Gather", namer(f"{base}_Gather"), attrs={"axis": 0},
                               inputs=[constant(namer(f"{base}_codebook"), enc.codebook), idx], outputs=[looked]))
    if enc.scale is not None:
        view = [1] * len(shape)
        view[enc.axis] = -1
        s = constant(namer(f"{base}_scale"), np.asarray(enc.scale, np.float32).reshape(view))
        graph.nodes.append(gs.Node("Mul", namer(f"{base}_scale_Mul"), inputs=[looked, s], outputs=[out]))
    return out


NBITS_MAX_BLOCK = {2: 256}  # onnxruntime 1.32: "2-bit MatMulNBits block_size must not exceed 256"


def nbits_block(enc: Encoded, k: int) -> int:
    """MatMulNBits's block size for ``enc`` of input width ``k``: its own block, else the next power of two >= k (at
    least 16, at most what the kernel takes for these bits; per-channel parameters are then repeated per block)."""
    if enc.block:
        return enc.block
    return min(max(16, 1 << max(0, int(k - 1).bit_length())), NBITS_MAX_BLOCK.get(enc.spec.bits, 1 << 30))


def matmul_nbits_inputs(enc: Encoded, k: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    """(B uint8 [N, blocks, blob], scales [N, blocks], packed zero points or None, bits, block size) of an affine
    ``enc`` whose weight is [K, N] (input axis 0)."""
    bits = enc.spec.bits
    block = nbits_block(enc, k)
    blocks = -(-k // block)
    q = enc.values.astype(np.int64)  # [K, N]
    offset = 0 if enc.zero_point is not None else 1 << (bits - 1)
    codes = (q + offset).T  # [N, K] unsigned
    codes = np.concatenate([codes, np.full((n, blocks * block - k), offset, np.int64)], 1)  # padding decodes to 0
    b = pack_bits(codes.reshape(n, blocks, block), bits)
    if enc.block:
        scales = np.ascontiguousarray(np.asarray(enc.scale, np.float32).T)  # [N, blocks]
    else:
        scales = np.repeat(np.asarray(enc.scale, np.float32).reshape(n, 1), blocks, 1)
    zp = None
    if enc.zero_point is not None:
        z = enc.zero_point.astype(np.int64)
        z = np.ascontiguousarray(z.T) if enc.block else np.repeat(z.reshape(n, 1), blocks, 1)
        zp = pack_bits(z, bits)  # [N, ceil(blocks * bits / 8)]
    return b, scales, zp, bits, block


def matmul_nbits(graph: gs.Graph, node: gs.Node, enc: Encoded, k: int, n: int, accuracy_level: int, namer,
                 bias: gs.Tensor | None) -> gs.Node:
    """Replace ``node`` (MatMul, or Gemm without transA, alpha = beta = 1) by one MatMulNBits; returns it."""
    b, scales, zp, bits, block = matmul_nbits_inputs(enc, k, n)
    base = node.name or node.outputs[0].name
    empty = gs.Variable.empty()
    inputs: list[gs.Tensor] = [node.inputs[0], constant(namer(f"{base}_B"), b),
                               constant(namer(f"{base}_scales"), scales)]
    inputs.append(constant(namer(f"{base}_zero_points"), zp) if zp is not None else empty)
    if bias is not None:
        inputs += [gs.Variable.empty(), bias]
    while inputs and inputs[-1].name == "":
        inputs.pop()
    new = gs.Node("MatMulNBits", namer(f"{base}_MatMulNBits"), domain="com.microsoft", inputs=inputs,
                  outputs=list(node.outputs),
                  attrs={"K": int(k), "N": int(n), "bits": int(bits), "block_size": int(block),
                         "accuracy_level": int(accuracy_level)})
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.append(new)
    return new


def gather_block_quantized(graph: gs.Graph, node: gs.Node, enc: Encoded, namer) -> gs.Node:
    """Replace ``node`` (Gather along axis 0 of a [V, H] table encoded int4 with rows as channels) by one
    ``com.microsoft.GatherBlockQuantized``: the int4 / uint4 table, scales [V, blocks] (per-row scales repeated over
    blocks of at most 256), zero points as stored; only the rows looked up are dequantized."""
    v, h = enc.values.shape
    block = enc.block or min(max(16, 1 << max(0, int(h - 1).bit_length())), 256)
    blocks = -(-h // block)
    scale = np.asarray(enc.scale, np.float32)
    scales = scale if enc.block else np.repeat(scale.reshape(v, 1), blocks, 1)
    base = node.name or node.outputs[0].name
    inputs: list[gs.Tensor] = [constant(namer(f"{base}_data"), enc.values), node.inputs[1],
                               constant(namer(f"{base}_scales"), np.ascontiguousarray(scales))]
    if enc.zero_point is not None:
        zp = enc.zero_point if enc.block else np.repeat(enc.zero_point.reshape(v, 1), blocks, 1)
        inputs.append(constant(namer(f"{base}_zero_points"), np.ascontiguousarray(zp)))
    new = gs.Node("GatherBlockQuantized", namer(f"{base}_GatherBlockQuantized"), domain="com.microsoft",
                  inputs=inputs, outputs=list(node.outputs),
                  attrs={"gather_axis": 0, "quantize_axis": 1, "block_size": int(block)})
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.append(new)
    return new


__all__ = ["constant", "decoder", "gather_block_quantized", "matmul_nbits", "matmul_nbits_inputs", "nbits_block"]
