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
    out = target_case("tensorrt", name, expect="static")  # static even for bert: never dynamic
    assert not {"DynamicQuantizeLinear", "MatMulInteger"} & {n.op_type for n in out.graph.node}


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", REAL)
def test_tensorrt_real(name):
    target_case("tensorrt", name, expect="static")  # never dynamic


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "bert"])
def test_tensorrt_fp16_keeps_scales_float32(name):
    out = target_case("tensorrt", name, expect="static", fp16=True)
    inits = {t.name: t for t in out.graph.initializer}
    fp16 = [t for t in inits.values() if t.data_type == onnx.TensorProto.FLOAT16]
    assert fp16 or name == "resnet18"
    for n in out.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
    assert [o.type.tensor_type.elem_type for o in out.graph.output] == [onnx.TensorProto.FLOAT] * len(out.graph.output)


def test_tensorrt_without_calibration_is_float_fp16():
    out = target_case("tensorrt", "small_cnn", calibrated=False, expect="float", fp16=True)
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


@pytest.mark.slow
def test_tensorrt_resnet18_residual_adds_quantize_one_input():
    """Every residual Add: exactly one input carries Q/DQ (identity blocks: the skip; downsample blocks: the 1x1
    shortcut conv), the other comes straight from the main-branch Conv; lint clean; cosine >= 0.99 vs FP32."""
    from onnxopt.pass_manager import PassContext
    from onnxopt.targets.qdq_lint import dq_feeding, iter_views, q_behind
    from onnxopt.verify import run_model
    from tests.differential import apply_passes
    from tests.targets.test_x86 import cosine, model_and_data

    model, calib, feeds = model_and_data("resnet18")
    t = get_target("tensorrt")
    ctx = PassContext(target=t.name, options={"quantize": "static"}, calibration=calib)
    out, _ = apply_passes(model, t.pipeline(ctx.options), ctx)
    assert t.lint(out) == []
    onnx.checker.check_model(out, full_check=True)
    view = next(iter_views(out))
    adds = [n for n in view.nodes if n.op_type == "Add" and all(view.constant(i) is None for i in n.input)]
    assert len(adds) == 8
    downsample = 0
    for add in adds:
        dqs = [dq_feeding(i, view) for i in add.input]
        assert sum(d is not None for d in dqs) == 1, add.name
        main = add.input[[d is None for d in dqs].index(True)]
        assert view.producer(main).op_type == "Conv"
        src = view.producer(q_behind(next(d for d in dqs if d is not None), view).node.input[0])
        if src.op_type == "Conv":  # downsample block: the quantized branch is the 1x1 shortcut
            downsample += 1
            w = view.constant(view.producer(src.input[1]).input[0])
            assert w.shape[2:] == (1, 1)
    assert downsample == 3
    for feed in feeds:
        ref = run_model(model, feed, "onnxruntime", optimize=False)
        got = run_model(out, feed, "onnxruntime", optimize=False)
        for k in ref:
            assert cosine(ref[k], got[k]) >= 0.99
