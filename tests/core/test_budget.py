"""Budget: each metric on hand-made outputs, parsing, per-output terms, defaults that fit the output."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from onnxopt.budget import Budget, CustomMetric, Judge, output_producers, parse_term, usage
from onnxopt.errors import UserError


def _probs(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_metrics_on_hand_made_outputs():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 5.0, 1.0], [2.0, 1.0, 0.0]], np.float32)
    got = ref.copy()
    got[1] = [1.0, 2.0, 3.0]  # one of four positions changes its argmax
    got[3, 0] += 0.5
    b = Budget.parse(["top1:0.75", "maxabs:4", "snr:5", "cosine:0.5"]).resolve([{"y": ref}])
    res = b.evaluate([{"y": ref}], [{"y": got}])
    values = {t.metric: t.value for t in res.terms}
    assert values["top1"] == 0.75
    assert values["maxabs"] == 2.0
    noise = 4.0 + 4.0 + 0.25
    assert values["snr"] == pytest.approx(10 * math.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise))
    r, g = ref.ravel().astype(np.float64), got.ravel().astype(np.float64)
    assert values["cosine"] == pytest.approx(r @ g / np.linalg.norm(r) / np.linalg.norm(g))
    assert res.ok
    res = Budget.parse("top1:0.8").resolve([{"y": ref}]).evaluate([{"y": ref}], [{"y": got}])
    assert not res.ok and res.usage == pytest.approx(0.25 / 0.2)


def test_equal_outputs_meet_a_cosine_of_one():
    a = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    b = Budget.parse("cosine:1").resolve([{"y": a}])
    assert b.evaluate([{"y": a}], [{"y": a.copy()}]).ok
    assert not b.evaluate([{"y": a}], [{"y": a + 1e-3}]).ok


def test_usage_is_one_at_the_limit():
    assert usage("cosine", 0.99, 0.99) == pytest.approx(1.0)
    assert usage("cosine", 0.995, 0.99) == pytest.approx(0.5)
    assert usage("snr", 30.0, 30.0) == pytest.approx(1.0) and usage("snr", 40.0, 30.0) == pytest.approx(0.1)
    assert usage("maxabs", 0.025, 0.05) == pytest.approx(0.5)
    assert usage("top1", 1.0, 1.0) == 0.0 and usage("top1", 0.9, 1.0) == math.inf


def test_parsing_and_errors():
    assert parse_term("cosine:0.99").output is None
    t = parse_term("logits=top1:0.995")
    assert (t.output, t.metric, t.limit) == ("logits", "top1", 0.995)
    assert parse_term("a=b=snr:30").output == "a=b"
    for bad, msg in (("cos:0.9", "METRIC:LIMIT"), ("cosine:x", "not a number"), ("cosine:1.5", r"in \[0, 1\]"),
                     ("=cosine:0.9", "empty"), ("maxabs:-1", "at least 0")):
        with pytest.raises(UserError, match=msg):
            parse_term(bad)
    with pytest.raises(UserError, match="does not have"):
        Budget.parse("nope=cosine:0.9").resolve([{"y": np.zeros(3, np.float32)}])


def test_defaults_fit_the_output():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 10)).astype(np.float32)
    sample = {"probs": _probs(logits), "feat": logits, "ids": logits.argmax(-1), "logp": logits}
    resolved = Budget(min_cosine=0.98).resolve([sample], producers={"logp": "LogSoftmax"})
    terms = {k: [(t.metric, t.limit) for t in v] for k, v in resolved.per_output.items()}
    assert terms == {"probs": [("top1", 0.99)], "feat": [("cosine", 0.98)], "ids": [("equal", 0.99)],
                     "logp": [("top1", 0.99)]}
    # a per-output term replaces that output's default; a common term replaces the defaults of the rest
    resolved = Budget.parse(["probs=cosine:0.999", "snr:20"]).resolve([sample])
    assert [t.spec() for t in resolved.per_output["probs"]] == ["probs=cosine:0.999"]
    assert [t.spec() for t in resolved.per_output["feat"]] == ["snr:20"]


def test_probabilities_judged_by_top1_not_cosine():
    """Probabilities whose cosine stays high while the predicted class flips: the default budget must fail them."""
    ref = _probs(np.array([[2.0, 1.95, 0.0, 0.0]] * 8, np.float32))
    got = _probs(np.array([[1.95, 2.0, 0.0, 0.0]] * 8, np.float32))
    resolved = Budget().resolve([{"p": ref}])
    res = resolved.evaluate([{"p": ref}], [{"p": got}])
    assert not res.ok and res.terms[0].metric == "top1" and res.terms[0].value == 0.0
    assert Budget.parse("cosine:0.99").resolve([{"p": ref}]).evaluate([{"p": ref}], [{"p": got}]).ok


def test_samples_are_judged_together_and_missing_outputs_fail():
    ref = [{"y": np.array([1.0, 0.0], np.float32)}, {"y": np.array([0.0, 1.0], np.float32)}]
    got = [{"y": np.array([1.0, 0.0], np.float32)}, {"y": np.array([1.0, 0.0], np.float32)}]
    res = Budget.parse("cosine:0.4").resolve(ref).evaluate(ref, got)
    assert res.terms[0].value == pytest.approx(0.5)  # cosine of the two samples side by side
    assert not Budget.parse("cosine:0.4").resolve(ref).evaluate(ref, [{}, {}]).ok


def _softmax_model():
    nodes = [h.make_node("MatMul", ["x", "w"], ["l"]), h.make_node("Softmax", ["l"], ["s"]),
             h.make_node("Reshape", ["s", "shape"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 3]), h.make_tensor_value_info("l", T.FLOAT, [2, 3])],
                     [h.make_tensor("w", T.FLOAT, [4, 3], np.linspace(-1, 1, 12).tolist()),
                      h.make_tensor("shape", T.INT64, [2], [2, 3])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def test_output_producers_look_through_reshape():
    assert output_producers(_softmax_model()) == {"y": "Softmax", "l": "MatMul"}


def test_judge_with_a_custom_metric():
    model = _softmax_model()
    feeds = [{"x": np.full((2, 4), float(i), np.float32)} for i in range(3)]

    def score(session) -> float:  # higher is better: minus the mean of output l
        return -float(np.mean(session.run(["l"], {"x": np.ones((2, 4), np.float32)})[0]))

    judge = Judge.create(model, feeds, Budget(custom=CustomMetric(score, max_drop=0.0, name="m")))
    assert set(judge.budget.per_output) == set()  # the custom metric replaces the default terms
    res = judge(model)
    assert res.ok and res.terms[0].metric == "custom" and res.size_bytes == model.ByteSize()
    worse = _softmax_model()
    worse.graph.initializer[0].float_data[:] = [v + 1.0 for v in worse.graph.initializer[0].float_data]
    assert not judge(worse).ok
    with pytest.raises(UserError, match="--max-drop"):
        CustomMetric.from_spec("math:fabs", None)
    with pytest.raises(UserError, match="cannot load"):
        CustomMetric.from_spec("no_such_module_xyz:f", 0.1)
    assert CustomMetric.from_spec("math:fabs", 0.5).fn is math.fabs
