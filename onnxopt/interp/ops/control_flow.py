"""Control flow: If, Loop and Scan. Subgraphs run through ``KernelContext.run_subgraph(graph, inputs)``,
which sees the outer scope's tensors (the interpreter passes them by name)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxopt.interp.registry import kernel


@kernel("If", since=1, context=True)
def If(ctx, cond, else_branch=None, then_branch=None):
    branch = then_branch if bool(np.asarray(cond).reshape(-1)[0]) else else_branch
    return tuple(ctx.run_subgraph(branch, []))


def _empty_like_output(vi: onnx.ValueInfoProto) -> np.ndarray:
    """A zero-length scan output when the loop ran no iteration (shape from the body's declared type)."""
    tt = vi.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.float32
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim] if tt.HasField("shape") else []
    return np.zeros([0, *dims], dtype=dtype)


@kernel("Loop", since=1, context=True)
def Loop(ctx, M=None, cond=None, *v_initial, body=None):
    n_state = len(v_initial)
    n_scan = len(body.output) - 1 - n_state
    trip = None if M is None else int(np.asarray(M).reshape(-1)[0])
    keep = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    values = list(v_initial)
    scans: list[list[np.ndarray]] = [[] for _ in range(n_scan)]
    i = 0
    while (trip is None or i < trip) and keep:
        outs = ctx.run_subgraph(body, [np.array(i, dtype=np.int64), np.array(keep), *values])
        keep = bool(np.asarray(outs[0]).reshape(-1)[0])
        values = list(outs[1:1 + n_state])
        for j, s in enumerate(outs[1 + n_state:]):
            scans[j].append(s)
        i += 1
    stacked = [
        np.stack(s) if s else _empty_like_output(body.output[1 + n_state + j]) for j, s in enumerate(scans)
    ]
    return tuple(values + stacked)


def _scan(ctx, body, states, scan_inputs, in_axes, in_dirs, out_axes, out_dirs):
    n_state = len(states)
    n_out = len(body.output) - n_state
    rank0 = scan_inputs[0].ndim
    seq = scan_inputs[0].shape[in_axes[0] % rank0]
    outs_acc: list[list[np.ndarray]] = [[] for _ in range(n_out)]
    states = list(states)
    for t in range(seq):
        slices = [np.take(x, seq - 1 - t if d else t, axis=a)
                  for x, a, d in zip(scan_inputs, in_axes, in_dirs, strict=False)]
        outs = ctx.run_subgraph(body, states + slices)
        states = list(outs[:n_state])
        for k, o in enumerate(outs[n_state:]):
            outs_acc[k].append(o)
    result = []
    for k, acc in enumerate(outs_acc):
        if out_dirs[k]:
            acc = acc[::-1]
        if not acc:
            result.append(_empty_like_output(body.output[n_state + k]))
            continue
        axis = out_axes[k]
        result.append(np.stack(acc, axis=axis + acc[0].ndim + 1 if axis < 0 else axis))
    return states + result


@kernel("Scan", since=9, context=True)
def Scan(ctx, *inputs, body=None, num_scan_inputs=1, scan_input_axes=None, scan_input_directions=None,
         scan_output_axes=None, scan_output_directions=None):
    m = num_scan_inputs
    n_state = len(inputs) - m
    n_out = len(body.output) - n_state
    return tuple(_scan(ctx, body, list(inputs[:n_state]), list(inputs[n_state:]),
                       scan_input_axes or [0] * m, scan_input_directions or [0] * m,
                       scan_output_axes or [0] * n_out, scan_output_directions or [0] * n_out))


@kernel("Scan", since=8, context=True)
def Scan_8(ctx, sequence_lens, *inputs, body=None, num_scan_inputs=1, directions=None):
    """Opset 8: batch axis 0, scan axis 1, optional per-batch sequence lengths (full lengths only)."""
    m = num_scan_inputs
    n_state = len(inputs) - m
    n_out = len(body.output) - n_state
    batch = inputs[n_state].shape[0]
    full = inputs[n_state].shape[1]
    if sequence_lens is not None and (np.asarray(sequence_lens) != full).any():
        raise NotImplementedError("Scan-8 with sequence_lens shorter than the sequence is not supported")
    per_batch = []
    for b in range(batch):
        per_batch.append(_scan(ctx, body, [s[b] for s in inputs[:n_state]], [x[b] for x in inputs[n_state:]],
                               [0] * m, directions or [0] * m, [0] * n_out, [0] * n_out))
    return tuple(np.stack([r[k] for r in per_batch]) for k in range(n_state + n_out))
