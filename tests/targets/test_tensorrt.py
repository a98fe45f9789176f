"""tensorrt outputs: lint-clean, full check, load in onnxruntime, cosine >= 0.98; fp16; trtexec line.

No GPU here: whether TensorRT consumes every Q/DQ is not tested (see the module docstring of tensorrt_lint).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.errors import UserError
from onnxopt.targets import get_target
from onnxopt.targets.tensorrt import trtexec_command
from tests.targets.test_x86 import REAL, ZOO, target_case


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_tensorrt_zoo(name):
    out = target_case("tensorrt", name)
    assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)  # static even for bert: never dynamic
    assert not {"DynamicQuantizeLinear", "MatMulInteger"} & {n.op_type for n in out.graph.node}


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", REAL)
def test_tensorrt_real(name):
    target_case("tensorrt", name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "bert"])
def test_tensorrt_fp16_keeps_scales_float32(name):
    out = target_case("tensorrt", name, fp16=True)
    inits = {t.name: t for t in out.graph.initializer}
    fp16 = [t for t in inits.values() if t.data_type == onnx.TensorProto.FLOAT16]
    assert fp16 or name == "resnet18"
    for n in out.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
    assert [o.type.tensor_type.elem_type for o in out.graph.output] == [onnx.TensorProto.FLOAT] * len(out.graph.output)


def test_tensorrt_without_calibration_is_float_fp16():
    out = target_case("tensorrt", "small_cnn", calibrated=False, fp16=True)
    assert not any(n.op_type == "QuantizeLinear" for n in out.graph.node)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in out.graph.initializer)


def test_tensorrt_refuses_dynamic():
    with pytest.raises(UserError):
        get_target("tensorrt").pipeline({"quantize": "dynamic"})


def test_tensorrt_symmetric_narrow_weights():
    from onnxopt.targets.qdq_lint import iter_views, qdq_nodes, weighted_inputs

    out = target_case("tensorrt", "small_cnn")
    views = list(iter_views(out))
    assert all(q.zero_point_is_zero() and q.dtype == "int8" for v in views for q in qdq_nodes(v))
    ws = [wi.weight_value for v in views for n in v.nodes if (wi := weighted_inputs(n, v)) and wi.weight_dq]
    assert ws and all(w.min() >= -127 for w in ws if w.dtype == np.int8)


def test_trtexec_command():
    cmd = trtexec_command("/tmp/m.onnx", shapes="x:1x3x224x224")
    assert cmd.startswith("trtexec --onnx=/tmp/m.onnx --saveEngine=/tmp/m.engine --stronglyTyped")
    assert "--shapes=x:1x3x224x224" in cmd
