"""Dependency groups on small graphs built for each structure: residual, depthwise, SE, C2f (Split + Concat),
Flatten into Gemm, and the cases that must stay locked."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxopt.analysis.dependency_groups import analyze, describe_groups
from onnxopt.ir import Model
from onnxopt.models.zoo_misc import GraphBuilder, tensor


def _finish(b: GraphBuilder, y: str, cin: int, name: str, hw: int = 8) -> onnx.ModelProto:
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    w = b.const((b.rng.standard_normal((cin, 5)) / np.sqrt(cin)).astype(np.float32), "fc.w")
    b.nodes.append(helper.make_node("MatMul", [y, w], ["out"], name="fc"))
    return b.model(name, [tensor("x", [1, 3, hw, hw])], [tensor("out", [1, 5])])


def _conv(b, x, cin, cout, k=3, group=1, name=None, stride=1):
    y = b.conv(x, cin, cout, k, group=group, bias=True, stride=stride)
    if name:
        b.nodes[-1].name = name
    return y


def residual() -> onnx.ModelProto:
    b = GraphBuilder(1)
    s = b.op("Relu", [_conv(b, "x", 3, 16, name="stem")])
    y = b.op("Relu", [_conv(b, s, 16, 16, name="a1")])
    y = _conv(b, y, 16, 16, name="a2")
    y = b.op("Relu", [b.op("Add", [y, s])])
    return _finish(b, _conv(b, y, 16, 24, name="head"), 24, "residual")


def depthwise() -> onnx.ModelProto:
    b = GraphBuilder(2)
    y = b.op("Relu", [_conv(b, "x", 3, 16, name="stem")])
    y = b.op("Relu", [_conv(b, y, 16, 32, k=1, name="expand")])
    y = b.op("Clip", [_conv(b, y, 32, 32, group=32, name="dw")], )
    y = _conv(b, y, 32, 16, k=1, name="project")
    return _finish(b, y, 16, "depthwise")


def squeeze_excite() -> onnx.ModelProto:
    b = GraphBuilder(3)
    y = b.op("HardSwish", [_conv(b, "x", 3, 16, name="stem")])
    y = b.op("HardSwish", [_conv(b, y, 16, 32, name="body")])
    s = b.op("GlobalAveragePool", [y])
    s = b.op("Relu", [_conv(b, s, 32, 8, k=1, name="se_reduce")])
    s = b.op("HardSigmoid", [_conv(b, s, 8, 32, k=1, name="se_expand")])
    y = b.op("Mul", [y, s])
    return _finish(b, _conv(b, y, 32, 16, k=1, name="after"), 16, "se")


def c2f() -> onnx.ModelProto:
    """YOLOv8 C2f: conv -> Split in two halves -> bottleneck on the second -> Concat(a, b, bottleneck) -> conv."""
    b = GraphBuilder(4)
    y = b.op("Relu", [_conv(b, "x", 3, 32, name="cv1")])
    a, c = b.op("Split", [y, b.i64([16, 16], "split")], n_out=2, axis=1)
    m = b.op("Relu", [_conv(b, c, 16, 16, name="m1")])
    m = b.op("Add", [_conv(b, m, 16, 16, name="m2"), c])
    y = b.op("Concat", [a, c, m], axis=1)
    return _finish(b, b.op("Relu", [_conv(b, y, 48, 24, k=1, name="cv2")]), 24, "c2f")


def flatten_gemm() -> onnx.ModelProto:
    b = GraphBuilder(5)
    y = b.op("Relu", [_conv(b, "x", 3, 8, name="stem")])
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("Flatten", [y], axis=1)
    w = b.const((b.rng.standard_normal((12, 8 * 16)) * 0.1).astype(np.float32), "fc1.w")
    bias = b.const(np.zeros(12, np.float32), "fc1.b")
    b.nodes.append(helper.make_node("Gemm", [y, w, bias], ["h"], name="fc1", transB=1))
    y = b.op("Relu", ["h"])
    w2 = b.const((b.rng.standard_normal((12, 5)) * 0.3).astype(np.float32), "fc2.w")
    b.nodes.append(helper.make_node("Gemm", [y, w2], ["out"], name="fc2"))
    return b.model("flatten_gemm", [tensor("x", [1, 3, 8, 8])], [tensor("out", [1, 5])])


def dynamic_reshape_and_lrn() -> onnx.ModelProto:
    b = GraphBuilder(6)
    y = b.op("Relu", [_conv(b, "x", 3, 8, name="stem")])
    y = b.op("LRN", [_conv(b, y, 8, 8, name="to_lrn")], size=3)
    y = _conv(b, y, 8, 8, name="before_shape")
    shape = b.op("Shape", [y])
    y = b.op("Reshape", [y, shape])
    return _finish(b, y, 8, "locked")


MODELS = {"residual": residual, "depthwise": depthwise, "se": squeeze_excite, "c2f": c2f,
          "flatten_gemm": flatten_gemm, "locked": dynamic_reshape_and_lrn}


def _groups(proto):
    a = analyze(Model.from_onnx(proto))
    return {tuple(g.producers): g for g in a.groups if g.producers}, a


def test_residual_joins_branches():
    groups, _ = _groups(residual())
    g = groups[("a2", "stem")]
    assert g.locked is None and g.size == 16
    assert set(g.consumers) == {"a1", "head"}
    assert groups[("a1",)].consumers == ["a2"]


def test_depthwise_tied_to_its_input():
    groups, _ = _groups(depthwise())
    g = groups[("dw", "expand")]
    assert g.locked is None and g.size == 32 and g.consumers == ["project"]
    assert all(len(c) == 4 for c in g.channels)  # expand out, relu out, dw out, clip out


def test_squeeze_excite_expand_joins_the_scaled_tensor():
    groups, _ = _groups(squeeze_excite())
    g = groups[("body", "se_expand")]
    assert g.locked is None and g.size == 32
    assert set(g.consumers) == {"after", "se_reduce"}
    assert groups[("se_reduce",)].consumers == ["se_expand"]


def test_c2f_split_and_concat_offsets():
    groups, a = _groups(c2f())
    first, second = [g for k, g in groups.items() if k == ("cv1",)] + [groups[("cv1", "m2")]]
    assert first.size == 16 and second.size == 16  # the two halves of cv1 are separate groups
    assert second.consumers == ["cv2", "m1"]
    # the half that goes straight to the concat sits at offset 0 of the concat output, the second at 16 and 32
    concat = next(t for t in a.cg.axis if t.startswith("Concat"))
    assert sorted(int(c[concat][0]) for c in first.channels) == list(range(16))
    assert sorted(int(i) for c in second.channels for i in c[concat]) == list(range(16, 48))


def test_flatten_maps_a_channel_to_its_block_of_gemm_features():
    groups, a = _groups(flatten_gemm())
    g = groups[("stem",)]
    assert g.locked is None and g.consumers == ["fc1"]
    flat = next(t for t in g.tensors if t.startswith("Flatten"))
    for c in g.channels:
        stem_channel = int(c[next(t for t in g.tensors if t.startswith("Conv"))][0])
        assert list(c[flat]) == list(range(16 * stem_channel, 16 * stem_channel + 16))
    assert groups[("fc1",)].locked is None and groups[("fc1",)].consumers == ["fc2"]


def test_locked_with_reasons():
    groups, _ = _groups(dynamic_reshape_and_lrn())
    assert groups[("stem",)].locked is None
    assert "LRN" in groups[("to_lrn",)].locked
    assert "Shape" in groups[("before_shape",)].locked
    _, a = _groups(dynamic_reshape_and_lrn())
    assert any("dynamic reshape" in (g.locked or "") for g in a.groups)
    out = describe_groups(dynamic_reshape_and_lrn())
    text = "\n".join(out["lines"])
    assert "has no channel index map" in text and "reaches graph input 'x'" in text
    assert [g["producers"] for g in out["groups"] if g["prunable"]] == [["stem"]]


def test_graph_output_and_exclusion_lock():
    groups, _ = _groups(residual())
    assert "graph output" in next(g for g in groups.values() if "fc" in g.producers).locked
    a = analyze(Model.from_onnx(residual()), exclude={"head"})
    head = next(g for g in a.groups if g.producers == ["head"])
    assert "excluded" in head.locked
