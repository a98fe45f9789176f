"""PassManager: fixed points with a cap, timing, instruments that name the pass that broke the model."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import PassError
from onnxopt.ir import Model, iter_graphs
from onnxopt.pass_manager import FixedPoint, Pass, PassContext, PassManager, PassResult
from onnxopt.verify import make_pass_verifier


def relu_model() -> onnx.ModelProto:
    b = numpy_helper.from_array(np.ones(4, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class CountDown(Pass):
    """Changes the model a fixed number of times, then stops."""

    def __init__(self, times: int):
        self.left = times

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if self.left == 0:
            return PassResult(False)
        self.left -= 1
        return PassResult(True, {"steps": 1})


class BreakBias(Pass):
    """Claims to be lossless but changes the bias: the verify instrument must catch it."""

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        for g in iter_graphs(model.graph):
            for t in g.tensors().values():
                if isinstance(t, gs.Constant):
                    t.values = np.asarray(t.values) * 2
        return PassResult(True)


class DropOutput(Pass):
    """Leaves an invalid model: the checker instrument must name it."""

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        model.graph.nodes[1].inputs[0] = gs.Variable("dangling", dtype=np.float32)
        return PassResult(True)


def test_fixed_point_converges_and_counts():
    p = CountDown(3)
    report = PassManager([FixedPoint([p], max_iterations=10)]).run(Model.from_onnx(relu_model()))
    rec = report.records["CountDown"]
    assert report.converged
    assert (rec.runs, rec.changes, rec.stats["steps"]) == (4, 3, 3)
    assert rec.seconds >= 0


def test_fixed_point_cap_warns(caplog):
    with caplog.at_level(logging.WARNING):
        report = PassManager([FixedPoint([CountDown(50)], max_iterations=5, name="group")]).run(
            Model.from_onnx(relu_model()))
    assert not report.converged
    assert "did not converge within 5 iterations" in caplog.text


def test_verifier_names_the_pass():
    proto = relu_model()
    verifier = make_pass_verifier(proto)
    with pytest.raises(PassError, match="pass BreakBias changed the outputs"):
        PassManager([BreakBias()], verifier=verifier).run(Model.from_onnx(proto))


def test_checker_names_the_pass():
    with pytest.raises(PassError, match="DropOutput"):
        PassManager([DropOutput()], check=True).run(Model.from_onnx(relu_model()))


def test_dump_after_change(tmp_path):
    PassManager([CountDown(1), CountDown(0)], dump_dir=tmp_path).run(Model.from_onnx(relu_model()))
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps == ["001_CountDown.onnx"]
    onnx.checker.check_model(onnx.load(str(tmp_path / dumps[0])), full_check=True)


def test_model_round_trip_keeps_metadata():
    proto = relu_model()
    proto.producer_name = "exporter"
    proto.metadata_props.add(key="k", value="v")
    out = Model.from_onnx(proto).to_onnx()
    assert out.producer_name == "exporter"
    assert {p.key: p.value for p in out.metadata_props} == {"k": "v"}
    assert out.ir_version == proto.ir_version


def test_compare_handles_non_finite_values():
    from onnxopt.verify import compare_arrays

    ref = np.array([1.0, np.inf, -np.inf, np.nan], dtype=np.float32)
    assert compare_arrays("y", ref, ref.copy()).ok
    moved = compare_arrays("y", ref, np.array([1.0, 1.0, -np.inf, np.nan], dtype=np.float32))
    assert not moved.ok and moved.max_abs == np.inf
    nan_appeared = compare_arrays("y", ref, np.array([np.nan, np.inf, -np.inf, np.nan], dtype=np.float32))
    assert not nan_appeared.ok
