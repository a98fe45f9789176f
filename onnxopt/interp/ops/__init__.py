"""Kernel modules, one per op family; importing this package registers every kernel."""

from onnxopt.interp.ops import (  # noqa: F401
    control_flow,
    detection,
    elementwise,
    linalg,
    misc,
    nn,
    norm_extra,
    quant,
    reduce,
    resize,
    rnn,
    signal,
    tensor,
)
