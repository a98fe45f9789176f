"""MagnitudePrune: sparsity reached, shapes unchanged, compressed size shrinks, 0 is a no-op."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from differential import apply_passes

from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pass_manager import PassContext
from onnxopt.passes.magnitude_prune import MagnitudePrune
from onnxopt.verify import compare_outputs, run_model


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sparsity_reached(scope):
    proto = build("small_cnn")
    ctx = PassContext(options={"sparsity": 0.5, "sparsity_scope": scope, "sparsity_min_size": 100})
    out, report = apply_passes(proto, [MagnitudePrune()], ctx)
    onnx.checker.check_model(out, full_check=True)
    r = ctx.cache["sparsity_report"]
    assert abs(r["sparsity"] - 0.5) < 0.01
    assert r["zlib_bytes_after"] < r["zlib_bytes_before"]
    feeds = sample_inputs(proto)
    ref, got = run_model(proto, feeds), run_model(out, feeds)
    assert all(d.cosine > 0.5 for d in compare_outputs(ref, got))
    shapes = {i.name: i.dims for i in proto.graph.initializer}
    assert all(tuple(shapes.get(i.name.removesuffix("_sparse"), i.dims)) == tuple(i.dims)
               for i in out.graph.initializer)


def test_zero_is_noop():
    proto = build("small_cnn")
    out, _ = apply_passes(proto, [MagnitudePrune()], PassContext(options={"sparsity": 0}))
    feeds = sample_inputs(proto)
    assert np.array_equal(run_model(proto, feeds)["logits"], run_model(out, feeds)["logits"])
