"""Kernel modules, one per op family; importing this package registers every kernel."""

from onnxopt.interp.ops import (  # noqa: F401
    control_flow,
    elementwise,
    linalg,
    nn,
    quant,
    reduce,
    resize,
    rnn,
    tensor,
)
