"""PackMatMulNBits: weight-only 4-bit MatMul / Gemm in decoder form -> com.microsoft.MatMulNBits, the same numbers
(accuracy level 1: float compute), and the same packed tensors QuantizeWeights writes when it packs itself."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from differential import apply_passes, op_types
from onnx import TensorProto, helper, numpy_helper

from onnxopt.pass_manager import PassContext
from onnxopt.passes.pack_matmul_nbits import PackMatMulNBits
from onnxopt.passes.quantize_weights import QuantizeWeights
from onnxopt.verify import run_model

RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)


def dense_net() -> onnx.ModelProto:
    """x [2, 40] -> MatMul (40 -> 24) -> Relu -> Gemm (24 -> 8, transB, bias) -> y."""
    inits = [numpy_helper.from_array(RNG.standard_normal((40, 24)).astype(np.float32), "w1"),
             numpy_helper.from_array(RNG.standard_normal((8, 24)).astype(np.float32), "w2"),
             numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 40])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("fmt", ["int4:rtn", "int4:block=16:rtn", "int4:asym:rtn"])
def test_packs_the_decoder_form_exactly(fmt):
    proto = dense_net()
    decoded, _ = apply_passes(proto, [QuantizeWeights()], PassContext(options={"weights": fmt}))
    assert Counter(op_types(decoded))["DequantizeLinear"] == 2
    ctx = PassContext()
    packed, _ = apply_passes(decoded, [PackMatMulNBits(1)], ctx)
    onnx.checker.check_model(packed, full_check=True)
    ops = Counter(op_types(packed))
    assert ops["MatMulNBits"] == 2 and not ops["DequantizeLinear"] and not ops["Gemm"], ops
    assert not ctx.declines
    x = {"x": RNG.standard_normal((2, 40)).astype(np.float32)}
    want = run_model(decoded, x, optimize=False)["y"]  # the decoder as the spec says (no fusion at load)
    np.testing.assert_allclose(run_model(packed, x)["y"], want, rtol=1e-4, atol=1e-4)
    # the very tensors QuantizeWeights writes when it packs (the recipe without recovery steps)
    direct, _ = apply_passes(proto, [QuantizeWeights(1)], PassContext(options={"weights": fmt}))
    def blobs(m):
        return sorted(numpy_helper.to_array(t).tobytes() for t in m.graph.initializer)
    assert blobs(direct) == blobs(packed)


def test_declines_a_shared_decoder_and_leaves_int8_alone():
    proto = dense_net()
    decoded, _ = apply_passes(proto, [QuantizeWeights()], PassContext(options={"weights": "int4:rtn"}))
    dq_out = next(n.input[1] for n in decoded.graph.node if n.op_type == "MatMul")
    decoded.graph.node.append(helper.make_node("Identity", [dq_out], ["w_seen"], name="reader"))
    decoded.graph.output.append(helper.make_tensor_value_info("w_seen", TensorProto.FLOAT, [40, 24]))
    ctx = PassContext()
    packed, _ = apply_passes(decoded, [PackMatMulNBits(4)], ctx)
    assert Counter(op_types(packed))["MatMulNBits"] == 1  # the Gemm
    (d,) = ctx.declines
    assert d.where == "MatMul 'mm'" and "other readers" in d.reason
    w8, _ = apply_passes(proto, [QuantizeWeights()], PassContext(options={"weights": "w8:rtn"}))
    ctx = PassContext()
    out, _ = apply_passes(w8, [PackMatMulNBits(4)], ctx)
    assert "MatMulNBits" not in op_types(out) and not ctx.declines
