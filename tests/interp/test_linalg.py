"""Gemm / MatMul / Einsum against onnxruntime (optimizations off)."""

from __future__ import annotations

import numpy as np
import pytest
from test_nn import close, ort_node

from onnxopt.interp.ops import linalg

RNG = np.random.default_rng(2)  # replaced in each test by the test's own generator (conftest.py: rng)


@pytest.mark.parametrize("attrs", [dict(), dict(transA=1), dict(transB=1, alpha=0.5),
                                   dict(transA=1, transB=1, beta=2.0)])
@pytest.mark.parametrize("c_shape", [None, (3,), (1, 3), (4, 3)])
def test_gemm(attrs, c_shape):
    a = RNG.standard_normal((5, 4) if attrs.get("transA") else (4, 5)).astype(np.float32)
    b = RNG.standard_normal((3, 5) if attrs.get("transB") else (5, 3)).astype(np.float32)
    feeds = {"a": a, "b": b}
    if c_shape:
        feeds["c"] = RNG.standard_normal(c_shape).astype(np.float32)
    close(linalg.Gemm(*feeds.values(), **attrs), ort_node("Gemm", feeds, opset=13, **attrs))


def test_gemm_old_opset_broadcast_attr():
    a, b, c = (RNG.standard_normal(s).astype(np.float32) for s in ((2, 3), (3, 4), (4,)))
    # onnxruntime has no Gemm-6 kernel any more: the attribute is accepted and numpy broadcasting does the rest
    close(linalg.Gemm(a, b, c, broadcast=1), a @ b + c)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 3)),
                                   ((3, 4), (4,))])
def test_matmul_broadcast(sa, sb):
    a, b = RNG.standard_normal(sa).astype(np.float32), RNG.standard_normal(sb).astype(np.float32)
    close(linalg.MatMul(a, b), ort_node("MatMul", {"a": a, "b": b}, opset=13), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eq,shapes", [("ij,jk->ik", [(3, 4), (4, 5)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),
                                       ("ii->i", [(4, 4)]), ("ij->", [(3, 4)]),
                                       ("...ij,...jk", [(2, 3, 4), (2, 4, 5)])])
def test_einsum(eq, shapes):
    ins = {f"x{i}": RNG.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    close(linalg.Einsum(*ins.values(), equation=eq), ort_node("Einsum", ins, opset=13, equation=eq))
