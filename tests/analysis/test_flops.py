"""FLOPs and parameter counts against hand-computed values."""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxopt.analysis.flops import count_costs
from onnxopt.models.zoo import build
from onnxopt.models.zoo_misc import GraphBuilder, tensor


def test_conv_gemm_counts():
    b = GraphBuilder(0)
    y = b.conv("x", 3, 8, 3, bias=True)                   # out 1x8x6x6 (pads 1, stride 1 on 6x6)
    y = b.conv(y, 8, 8, 3, group=8)                        # depthwise
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    w = b.const(np.ones((8, 4), np.float32), "w")
    b.nodes.append(helper.make_node("Gemm", [y, w], ["out"], name="fc"))
    r = count_costs(b.model("t", [tensor("x", [1, 3, 6, 6])], [tensor("out", [1, 4])]))
    per = {n.op: n.flops for n in r.nodes}
    assert per["Conv"] in (2 * 8 * 36 * 27, 2 * 8 * 36 * 9)
    assert sum(n.flops for n in r.nodes if n.op == "Conv") == 2 * 8 * 36 * 27 + 2 * 8 * 36 * 9
    assert per["Gemm"] == 2 * 4 * 8
    assert per["GlobalAveragePool"] == 8 * 36
    assert r.params == 8 * 3 * 9 + 8 + 8 * 9 + 32
    assert not r.unknown


def test_resnet18_flops_match_the_known_figure():
    r = count_costs(build("resnet18"))
    assert 3.6e9 < r.flops < 3.7e9       # 1.8 GMACs, as published for ResNet-18 at 224x224
    assert 11.6e6 < r.params < 11.8e6    # 11.69 M parameters (BN included)
