"""Every zoo model must pass onnx's full check, run in onnxruntime on its sample inputs with finite outputs of the
expected shape, and be byte-for-byte deterministic."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.errors import UserError
from onnxopt.models.zoo import ZOO, build, main, sample_inputs
from onnxopt.models.zoo_transformer import bert

EXPECTED = {  # output shape for batch=2, sequence=16
    "small_cnn": (1, 10),
    "resnet18": (2, 1000),
    "mobilenetv2": (2, 1000),
    "bert": (2, 16, 256),
    "bert_decomposed": (2, 16, 256),
    "control_flow": (1, 8),
    "dynamic": (2, 16, 64),
    "opset11_constants": (1, 10),
}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.fixture(scope="module")
def built() -> dict[str, onnx.ModelProto]:
    return {name: build(name) for name in ZOO}


def test_registry_names() -> None:
    assert set(ZOO) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_checks_and_runs(name: str, built: dict[str, onnx.ModelProto]) -> None:
    model = built[name]
    onnx.checker.check_model(model, full_check=True)
    (out,) = _run(model, sample_inputs(model, batch=2, sequence=16))
    assert out.shape == EXPECTED[name]
    assert np.isfinite(out).all()
    assert out.std() > 1e-3, "a constant output would hide broken rewrites"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_deterministic(name: str, built: dict[str, onnx.ModelProto]) -> None:
    assert build(name).SerializeToString() == built[name].SerializeToString()


def test_fused_and_decomposed_bert_agree(built: dict[str, onnx.ModelProto]) -> None:
    fused, decomposed = built["bert"], built["bert_decomposed"]
    ops = {n.op_type for n in decomposed.graph.node}
    assert "LayerNormalization" not in ops and {"ReduceMean", "Pow", "Sqrt", "Div"} <= ops
    assert decomposed.opset_import[0].version == 13
    assert "LayerNormalization" in {n.op_type for n in fused.graph.node}
    feeds = sample_inputs(fused, batch=2, sequence=16)
    np.testing.assert_allclose(_run(fused, feeds)[0], _run(decomposed, feeds)[0], atol=1e-4)


def test_bert_mask_matters(built: dict[str, onnx.ModelProto]) -> None:
    model = built["bert"]
    feeds = sample_inputs(model, batch=2, sequence=16)
    assert (feeds["attention_mask"][:, -1] == 0).all() and (feeds["attention_mask"][:, 0] == 1).all()
    assert feeds["input_ids"].max() < 1000
    masked = _run(model, feeds)[0]
    feeds["attention_mask"][:] = 1
    assert not np.allclose(masked[:, 0], _run(model, feeds)[0][:, 0])


def test_bert_small_config_and_limits() -> None:
    model = bert(layers=1, hidden=32, heads=2, seq=8, vocab=50)
    onnx.checker.check_model(model, full_check=True)
    assert _run(model, sample_inputs(model, batch=3, sequence=8))[0].shape == (3, 8, 32)
    with pytest.raises(UserError):
        sample_inputs(model, sequence=9)
    with pytest.raises(ValueError):
        bert(hidden=30, heads=4)


def test_structure_has_what_passes_need(built: dict[str, onnx.ModelProto]) -> None:
    small = {n.op_type for n in built["small_cnn"].graph.node}
    assert {"BatchNormalization", "Dropout", "Identity"} <= small
    resnet = built["resnet18"]
    assert sum(n.op_type == "BatchNormalization" for n in resnet.graph.node) == 20
    assert sum(n.op_type == "Add" for n in resnet.graph.node) == 8
    assert all(len(n.input) == 2 for n in resnet.graph.node if n.op_type == "Conv")  # no bias before BN
    mnet = built["mobilenetv2"].graph.node
    assert any(n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute) for n in mnet)
    assert any(n.op_type == "Clip" for n in mnet)
    cf = built["control_flow"].graph.node
    if_node = next(n for n in cf if n.op_type == "If")
    for attr in if_node.attribute:
        assert {"Constant", "Conv", "Relu"} <= {n.op_type for n in attr.g.node}
    loop = next(n for n in cf if n.op_type == "Loop")
    assert "Constant" in {n.op_type for n in loop.attribute[0].g.node}
    dyn = {n.op_type for n in built["dynamic"].graph.node}
    assert {"Shape", "Gather", "Concat", "Reshape", "ConstantOfShape"} <= dyn
    old = built["opset11_constants"]
    assert old.opset_import[0].version == 11
    assert {i.name for i in old.graph.initializer} <= {i.name for i in old.graph.input}
    assert sum(n.op_type == "Constant" for n in old.graph.node) >= 4


def test_control_flow_takes_both_branches(built: dict[str, onnx.ModelProto]) -> None:
    model = built["control_flow"]
    x = np.abs(sample_inputs(model)["input"])
    pos, neg = _run(model, {"input": x})[0], _run(model, {"input": -x})[0]
    assert np.isfinite(pos).all() and np.isfinite(neg).all() and not np.allclose(pos, neg)


def test_dynamic_dims_stay_dynamic(built: dict[str, onnx.ModelProto]) -> None:
    model = built["dynamic"]
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[:2]] == ["batch", "sequence"]
    for b, s in ((1, 3), (4, 33)):
        assert _run(model, sample_inputs(model, batch=b, sequence=s))[0].shape == (b, s, 64)


def test_unknown_name_is_user_error() -> None:
    with pytest.raises(UserError, match="small_cnn"):
        build("nope")


def test_cli_writes_model(tmp_path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert main(["small_cnn", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert onnx.load(out).SerializeToString() == build("small_cnn").SerializeToString()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
