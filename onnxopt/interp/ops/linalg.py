"""Linear algebra kernels: Gemm, MatMul, Einsum (numpy / BLAS)."""

from __future__ import annotations

import numpy as np

from onnxopt.interp.registry import kernel


@kernel("Gemm", since=1)
def Gemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=0):
    """Y = alpha * A' @ B' + beta * C; ``broadcast`` (opset < 7) is accepted, numpy broadcasting covers it."""
    a = A.T if transA else A
    b = B.T if transB else B
    y = a @ b
    if alpha != 1.0:
        y = y * np.asarray(alpha, dtype=y.dtype)
    if C is not None:
        c = C if beta == 1.0 else C * np.asarray(beta, dtype=C.dtype)
        y = y + c.astype(y.dtype, copy=False)
    return y


@kernel("MatMul", since=1)
def MatMul(A, B):
    if A.dtype.kind not in "biufc":  # bfloat16 and other ml_dtypes
        return np.matmul(A.astype(np.float32), B.astype(np.float32)).astype(A.dtype)
    return np.matmul(A, B)


@kernel("Einsum", since=12)
def Einsum(*inputs, equation=""):
    eq = equation.replace(" ", "")
    dt = inputs[0].dtype
    if dt.kind not in "biufc":  # bfloat16 and other ml_dtypes: numpy's einsum cannot take them
        inputs = tuple(i.astype(np.float32) for i in inputs)
    res = np.einsum(eq, *inputs, optimize=len(inputs) > 2)
    return np.asarray(res).astype(dt)
