"""TensorRT's residual rule (targets/tensorrt_residual.py): the shortcut of a two-conv residual Add, and the regions
that put Q/DQ on it only."""

from __future__ import annotations

import numpy as np

from onnxopt.analysis.regions import build_regions
from onnxopt.ir import Model, constant_value, producer
from onnxopt.models.zoo import build
from onnxopt.pass_manager import PassContext, PassManager
from onnxopt.passes.canonicalize import canonicalize
from onnxopt.targets import get_target
from onnxopt.targets.tensorrt_residual import residual_shortcut, residual_skip_regions


def test_shortcut_is_the_1x1_downsample_conv_and_regions_follow():
    m = Model.from_onnx(build("resnet18"))
    PassManager(list(canonicalize({"min_opset": 13}))).run(m, PassContext())  # BatchNorm folded into the convs
    found = 0
    for node in m.graph.nodes:
        if node.op != "Add":
            continue
        s = residual_shortcut(node)
        prods = [producer(t) for t in node.inputs]
        if not all(p is not None and p.op == "Conv" for p in prods):
            assert s is None  # identity shortcut: one input is not a weighted op's output
            continue
        found += 1
        kernel = np.asarray(constant_value(prods[s].inputs[1])).shape[2:]
        assert tuple(kernel) == (1, 1)
    assert found == 3
    scheme = get_target("tensorrt").scheme
    rg = build_regions(m, scheme, {})
    changed = residual_skip_regions(rg)
    assert len(changed) == found
    for rid in changed:
        r = rg.region(rid)
        assert r.role == "residual-skip" and len(r.tensors) == 1
        add = rg.members[rid][0]
        assert r.tensors[0] == add.inputs[residual_shortcut(add)].name
