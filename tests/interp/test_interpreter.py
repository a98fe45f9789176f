"""The interpreter's framework: feeds and their validation, capture/callback, freeing, errors, subgraphs."""

from __future__ import annotations

import weakref

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import UserError
from onnxopt.interp import Interpreter
from onnxopt.interp.registry import kernel

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17, **kw):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *kw.pop("extra_opsets", [])],
                              **kw)
    return model


def _chain():
    """x -> Relu -> a -> Add(bias) -> b -> Mul(a) -> y"""
    bias = numpy_helper.from_array(np.array([1.0, -2.0, 3.0], dtype=np.float32), "bias")
    return _model(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Add", ["a", "bias"], ["b"]),
         helper.make_node("Mul", ["b", "a"], ["y"])],
        [helper.make_tensor_value_info("x", F, ["N", 3])], [helper.make_tensor_value_info("y", F, ["N", 3])],
        [bias],
    )


def _ort(model, feeds):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=False))


def test_run_matches_onnxruntime_and_loads_from_path(tmp_path):
    model = _chain()
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    want = _ort(model, {"x": x})["y"]
    np.testing.assert_allclose(Interpreter(model).run({"x": x})["y"], want, rtol=1e-6)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    np.testing.assert_allclose(Interpreter(path).run({"x": x})["y"], want, rtol=1e-6)
    np.testing.assert_allclose(Interpreter(str(path)).run({"x": x})["y"], want, rtol=1e-6)


def test_capture_returns_or_streams_intermediates():
    interp = Interpreter(_chain())
    x = np.ones((2, 3), dtype=np.float32)
    res = interp.run({"x": x}, capture=["a", "b"])
    assert set(res) == {"y", "a", "b"}
    np.testing.assert_array_equal(res["b"], np.array([[2.0, -1.0, 4.0]] * 2, dtype=np.float32))
    seen = []
    res = interp.run({"x": x}, capture="all", callback=lambda n, v: seen.append((n, v.shape)))
    assert [n for n, _ in seen] == ["x", "a", "b", "y"]
    assert set(res) == {"y"}


def test_intermediates_are_freed_after_their_last_consumer():
    alive = {}
    refs = {}

    @kernel("Probe", domain="test.onnxopt.interp")
    def Probe(x):  # records which earlier intermediates are still alive when it runs
        alive.update({n: r() is not None for n, r in refs.items()})
        return x.copy()

    model = _model(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
         helper.make_node("Abs", ["b"], ["c"]), helper.make_node("Neg", ["a"], ["unused"]),
         helper.make_node("Probe", ["c"], ["y"], domain="test.onnxopt.interp")],
        [helper.make_tensor_value_info("x", F, [3])], [helper.make_tensor_value_info("y", F, [3])],
        extra_opsets=[helper.make_opsetid("test.onnxopt.interp", 1)],
    )
    Interpreter(model).run({"x": np.ones(3, np.float32)}, capture="all",
                           callback=lambda n, v: refs.__setitem__(n, weakref.ref(v)))
    # a's last consumer is the second Neg, b's is Abs, unused has none; c is Probe's input, still held
    assert alive == {"x": True, "a": False, "b": False, "c": True, "unused": False}


def test_missing_kernel_names_op_domain_opset_and_dtypes():
    model = _model([helper.make_node("NoSuchOp", ["x"], ["y"], domain="my.domain")],
                   [helper.make_tensor_value_info("x", TensorProto.INT8, [2])],
                   [helper.make_tensor_value_info("y", F, [2])],
                   extra_opsets=[helper.make_opsetid("my.domain", 3)])
    with pytest.raises(UserError) as e:
        Interpreter(model)
    msg = str(e.value)
    assert "NoSuchOp" in msg and "my.domain" in msg and "opset 3" in msg and "int8" in msg


@pytest.mark.parametrize(
    "feeds, words",
    [
        ({"x": np.ones((2, 3), np.float32), "z": np.ones(1, np.float32)}, ["'z'", "not an input", "x"]),
        ({}, ["'x'", "missing", "float32"]),
        ({"x": np.ones((2, 3), np.float64)}, ["'x'", "float32", "float64"]),
        ({"x": np.ones((2, 3, 1), np.float32)}, ["'x'", "rank 2", "[2, 3, 1]"]),
        ({"x": np.ones((2, 4), np.float32)}, ["'x'", "['N', 3]", "[2, 4]"]),
    ],
    ids=["unknown", "missing", "dtype", "rank", "static-dim"],
)
def test_bad_feeds_raise_user_error_naming_input_expected_and_given(feeds, words):
    with pytest.raises(UserError) as e:
        Interpreter(_chain()).run(feeds)
    for w in words:
        assert w in str(e.value)


def test_input_specs_and_dynamic_dims():
    interp = Interpreter(_chain())
    (spec,) = interp.input_specs()
    assert spec.name == "x" and spec.dtype == np.float32 and spec.shape == ("N", 3)
    assert interp.run({"x": np.ones((7, 3), np.float32)})["y"].shape == (7, 3)


def _if_model():
    """y = If(c) then x * outer_w else x - outer_w; then-branch uses an outer-scope tensor."""
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F, [2])])
    else_g = helper.make_graph([helper.make_node("Sub", ["x", "w"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", F, [2])])
    w = numpy_helper.from_array(np.array([2.0, 3.0], np.float32), "w")
    return _model(
        [helper.make_node("Neg", ["x0"], ["x"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [helper.make_tensor_value_info("x0", F, [2]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", F, [2])], [w],
    )


def test_if_sees_outer_scope_and_captures_inside_branch():
    model = _if_model()
    onnx.checker.check_model(model, full_check=True)
    interp = Interpreter(model)
    x0 = np.array([1.0, -1.0], np.float32)
    for c in (True, False):
        feeds = {"x0": x0, "c": np.array(c)}
        seen = {}
        got = interp.run(feeds, capture="all", callback=seen.__setitem__)
        np.testing.assert_allclose(got["y"], _ort(model, feeds)["y"])
        assert ("t" in seen) == c and ("e" in seen) != c


def _loop_model():
    """Loop 4 times: s += x * i (x from the outer scope), scan out s each iteration."""
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=F), helper.make_node("Mul", ["x", "fi"], ["xi"]),
         helper.make_node("Add", ["s_in", "xi"], ["s_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["s_out"], ["scan"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", F, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", F, [2]), helper.make_tensor_value_info("scan", F, [2])],
    )
    return _model(
        [helper.make_node("Loop", ["M", "", "s0"], ["s", "scans"], body=body)],
        [helper.make_tensor_value_info("M", TensorProto.INT64, []), helper.make_tensor_value_info("x", F, [2]),
         helper.make_tensor_value_info("s0", F, [2])],
        [helper.make_tensor_value_info("s", F, [2]), helper.make_tensor_value_info("scans", F, [None, 2])],
    )


def test_loop_runs_with_outer_scope_and_calls_back_once_per_iteration():
    model = _loop_model()
    onnx.checker.check_model(model, full_check=True)
    feeds = {"M": np.array(4, np.int64), "x": np.array([1.0, 2.0], np.float32), "s0": np.zeros(2, np.float32)}
    calls = []
    got = Interpreter(model).run(feeds, capture=["xi", "s"], callback=lambda n, v: calls.append(n))
    want = _ort(model, feeds)
    np.testing.assert_allclose(got["s"], want["s"])
    np.testing.assert_allclose(got["scans"], want["scans"])
    assert calls == ["xi"] * 4 + ["s"]


def test_scan_with_outer_scope():
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "row"], ["a"]), helper.make_node("Mul", ["a", "k"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["out"])],
        "body",
        [helper.make_tensor_value_info("acc_in", F, [2]), helper.make_tensor_value_info("row", F, [2])],
        [helper.make_tensor_value_info("acc_out", F, [2]), helper.make_tensor_value_info("out", F, [2])],
    )
    k = numpy_helper.from_array(np.array([0.5, 2.0], np.float32), "k")
    model = _model(
        [helper.make_node("Scan", ["init", "xs"], ["final", "ys"], body=body, num_scan_inputs=1,
                          scan_input_directions=[1])],
        [helper.make_tensor_value_info("init", F, [2]), helper.make_tensor_value_info("xs", F, [5, 2])],
        [helper.make_tensor_value_info("final", F, [2]), helper.make_tensor_value_info("ys", F, [5, 2])], [k],
    )
    onnx.checker.check_model(model, full_check=True)
    feeds = {"init": np.ones(2, np.float32), "xs": np.arange(10, dtype=np.float32).reshape(5, 2)}
    got, want = Interpreter(model).run(feeds), _ort(model, feeds)
    for n in ("final", "ys"):
        np.testing.assert_allclose(got[n], want[n], rtol=1e-6)


def test_model_local_function():
    fn = helper.make_function(
        "local", "AddTwice", ["a", "b"], ["c"],
        [helper.make_node("Add", ["a", "b"], ["t"]), helper.make_node("Add", ["t", "b"], ["c"])],
        [helper.make_opsetid("", 17)],
    )
    model = _model([helper.make_node("AddTwice", ["x", "x"], ["y"], domain="local")],
                   [helper.make_tensor_value_info("x", F, [2])], [helper.make_tensor_value_info("y", F, [2])],
                   functions=[fn], extra_opsets=[helper.make_opsetid("local", 1)])
    onnx.checker.check_model(model, full_check=True)
    x = np.array([1.0, 2.0], np.float32)
    np.testing.assert_array_equal(Interpreter(model).run({"x": x})["y"], 3 * x)


def test_kernel_failure_names_the_node():
    model = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")],
                   [helper.make_tensor_value_info("x", F, [6]), helper.make_tensor_value_info("s", TensorProto.INT64,
                                                                                              [2])],
                   [helper.make_tensor_value_info("y", F, None)])
    with pytest.raises(RuntimeError, match="bad_reshape"):
        Interpreter(model).run({"x": np.ones(6, np.float32), "s": np.array([4, 4], np.int64)})
