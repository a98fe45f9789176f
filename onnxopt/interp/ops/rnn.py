"""Recurrent kernels: LSTM, GRU and RNN, following the ONNX spec.

All three share one driver: the input projection ``X @ W^T`` of every time step is one BLAS matmul, then each step
adds ``H @ R^T`` (BLAS) and applies the cell. Directions forward/reverse/bidirectional, layout 0/1,
``sequence_lens`` (steps past a batch entry's length leave its state alone and write zeros to ``Y``; the reverse
direction starts at the entry's own last step), ``clip`` on gate pre-activations and the ``activations`` attribute
(with ``activation_alpha``/``activation_beta`` consumed in order by the activations that take them).

The LSTM cell and the GRU state update with the default activations are Numba loops (:func:`lstm_cell_jit`,
:func:`gru_update_jit`); their numpy twins (:func:`lstm_cell_np`, :func:`gru_update_np`) run every other
activation set and are what the tests compare the loops against.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numba
import numpy as np

from onnxopt.interp.registry import kernel

Act = Callable[[np.ndarray], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype, copy=False)


def _softplus(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.log1p(np.exp(x))


# name -> (function of (x, alpha, beta), default alpha or None when unused, default beta or None when unused)
_ACTIVATIONS: dict[str, tuple[Callable, float | None, float | None]] = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: _sigmoid(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1)), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: _softplus(x), None, None),
}


def _activations(names: list[str] | None, alphas: list[float] | None, betas: list[float] | None,
                 defaults: tuple[str, ...], num_dir: int) -> tuple[list[list[Act]], bool]:
    """Per direction, the activation functions of the cell; and whether they are all the defaults."""
    names = list(names) if names else list(defaults) * num_dir
    per_dir = len(defaults)
    if len(names) == per_dir and num_dir == 2:  # one set given for both directions
        names = names * 2
    if len(names) != per_dir * num_dir:
        raise ValueError(f"activations {names}: expected {per_dir * num_dir} names")
    alphas, betas = list(alphas or []), list(betas or [])
    fns: list[Act] = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise ValueError(f"unsupported recurrent activation {name!r}")
        fn, da, db = _ACTIVATIONS[key]
        a = (alphas.pop(0) if alphas else da) if da is not None else 0.0
        b = (betas.pop(0) if betas else db) if db is not None else 0.0
        fns.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b).astype(x.dtype, copy=False))
    is_default = [n.lower() for n in names] == [d.lower() for d in defaults] * num_dir
    return [fns[d * per_dir:(d + 1) * per_dir] for d in range(num_dir)], is_default


def _clip(x: np.ndarray, clip: float | None) -> np.ndarray:
    return x if clip is None else np.clip(x, -clip, clip)


# ---- cells: numpy twins (any activations) and Numba loops (default activations) ---------------------------------

def lstm_cell_np(gates: np.ndarray, c_prev: np.ndarray, p: np.ndarray | None, clip: float | None,
                 input_forget: int, f: Act = _sigmoid, g: Act = np.tanh, h: Act = np.tanh
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM step from pre-activations ``gates`` [B, 4H] (order i, o, f, c, biases included)."""
    n = c_prev.shape[-1]
    gi, go, gf, gc = (gates[:, k * n:(k + 1) * n] for k in range(4))
    if p is not None:
        gi = gi + p[:n] * c_prev
        gf = gf + p[2 * n:] * c_prev
    i = f(_clip(gi, clip))
    fg = (1 - i) if input_forget else f(_clip(gf, clip))
    c = fg * c_prev + i * g(_clip(gc, clip))
    if p is not None:
        go = go + p[n:2 * n] * c
    o = f(_clip(go, clip))
    return o * h(c), c


@numba.njit(cache=True, nogil=True)
def lstm_cell_jit(gates, c_prev, p, use_p, clip, input_forget):  # pragma: no cover - jitted
    """:func:`lstm_cell_np` with sigmoid/tanh/tanh; ``clip`` < 0 means no clip, ``p`` is read when ``use_p``."""
    B, n = c_prev.shape
    h_out = np.empty_like(c_prev)
    c_out = np.empty_like(c_prev)
    for b in range(B):
        for j in range(n):
            cp = c_prev[b, j]
            gi = gates[b, j]
            go = gates[b, n + j]
            gf = gates[b, 2 * n + j]
            gc = gates[b, 3 * n + j]
            if use_p:
                gi += p[j] * cp
                gf += p[2 * n + j] * cp
            if clip >= 0:
                gi = min(max(gi, -clip), clip)
                gf = min(max(gf, -clip), clip)
                gc = min(max(gc, -clip), clip)
            i = 1.0 / (1.0 + math.exp(-gi))
            fg = 1.0 - i if input_forget else 1.0 / (1.0 + math.exp(-gf))
            c = fg * cp + i * math.tanh(gc)
            if use_p:
                go += p[n + j] * c
            if clip >= 0:
                go = min(max(go, -clip), clip)
            o = 1.0 / (1.0 + math.exp(-go))
            c_out[b, j] = c
            h_out[b, j] = o * math.tanh(c)
    return h_out, c_out


def gru_update_np(z_pre: np.ndarray, hh_pre: np.ndarray, h_prev: np.ndarray, clip: float | None,
                  f: Act = _sigmoid, g: Act = np.tanh) -> np.ndarray:
    """GRU state update: z = f(z_pre), candidate g(hh_pre), H = (1 - z) * candidate + z * h_prev."""
    z = f(_clip(z_pre, clip))
    return (1 - z) * g(_clip(hh_pre, clip)) + z * h_prev


@numba.njit(cache=True, nogil=True)
def gru_update_jit(z_pre, hh_pre, h_prev, clip):  # pragma: no cover - jitted
    """:func:`gru_update_np` with sigmoid/tanh; ``clip`` < 0 means no clip."""
    B, n = h_prev.shape
    out = np.empty_like(h_prev)
    for b in range(B):
        for j in range(n):
            zp = z_pre[b, j]
            hp = hh_pre[b, j]
            if clip >= 0:
                zp = min(max(zp, -clip), clip)
                hp = min(max(hp, -clip), clip)
            z = 1.0 / (1.0 + math.exp(-zp))
            out[b, j] = (1.0 - z) * math.tanh(hp) + z * h_prev[b, j]
    return out


# ---- shared driver ------------------------------------------------------------------------------------------------

def _work_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


def _prepare(X, initial_h, initial_c, layout):
    """Layout 1 -> layout 0 views: X [T, B, I], states [num_dir, B, H]."""
    if layout:
        X = np.swapaxes(X, 0, 1)
        initial_h = None if initial_h is None else np.swapaxes(initial_h, 0, 1)
        initial_c = None if initial_c is None else np.swapaxes(initial_c, 0, 1)
    return X, initial_h, initial_c


def _run(step, X, num_dir, n, direction, sequence_lens, states, layout, out_dtype):
    """Run ``step(d, x_proj_t, states_d) -> (h, *states_d)`` over time for each direction.

    ``X`` [T, B, ...] is already projected per direction by the caller into ``step``'s first argument source:
    ``X[d]`` [T, B, G]. Returns Y [T, num_dir, B, H] (layout 0) and the final states, laid out per ``layout``.
    """
    T, B = X[0].shape[:2]
    lens = np.full(B, T, np.int64) if sequence_lens is None else np.asarray(sequence_lens, np.int64).reshape(B)
    ragged = bool((lens != T).any())
    rows = np.arange(B)
    Y = np.zeros((T, num_dir, B, n), dtype=out_dtype)
    finals = []
    for d in range(num_dir):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        st = [s[d].copy() for s in states]
        for s in range(T):
            if ragged:
                t_b = np.clip(lens - 1 - s, 0, None) if reverse else np.full(B, s)
                active = s < lens
                if not active.any():
                    break
                new = step(d, X[d][t_b, rows], st)
                st = [np.where(active[:, None], v, old) for v, old in zip(new, st, strict=True)]
                Y[t_b[active], d, rows[active]] = new[0][active]
            else:
                t = T - 1 - s if reverse else s
                st = list(step(d, X[d][t], st))
                Y[t, d] = st[0]
        finals.append(st)
    outs = [Y] + [np.stack([f[k] for f in finals]) for k in range(len(states))]
    if layout:
        outs = [np.transpose(outs[0], (2, 0, 1, 3))] + [np.swapaxes(o, 0, 1) for o in outs[1:]]
    return tuple(o.astype(out_dtype, copy=False) for o in outs)


def _common(X, W, R, initial_h, layout, n_states, initial_c=None):
    X, initial_h, initial_c = _prepare(X, initial_h, initial_c, layout)
    dt = _work_dtype(X)
    num_dir, _, n = W.shape[0], W.shape[1], R.shape[-1]
    B = X.shape[1]
    zeros = np.zeros((num_dir, B, n), dt)
    h0 = zeros if initial_h is None else initial_h.astype(dt)
    states = [h0] if n_states == 1 else [h0, zeros if initial_c is None else initial_c.astype(dt)]
    return X.astype(dt, copy=False), W.astype(dt, copy=False), R.astype(dt, copy=False), states, num_dir, n, dt


def _clip_attr(clip):
    return None if clip is None else float(clip)


@kernel("LSTM", since=1)
def LSTM(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *, activation_alpha=None,
         activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None, input_forget=0,
         layout=0, output_sequence=0):
    out_dtype = X.dtype
    X, W, R, states, num_dir, n, dt = _common(X, W, R, initial_h, layout, 2, initial_c)
    bias = np.zeros((num_dir, 4 * n), dt) if B is None else (B[:, :4 * n] + B[:, 4 * n:]).astype(dt)
    peep = None if P is None else P.astype(dt)
    acts, default = _activations(activations, activation_alpha, activation_beta, ("Sigmoid", "Tanh", "Tanh"),
                                 num_dir)
    clip = _clip_attr(clip)
    proj = [X @ W[d].T + bias[d] for d in range(num_dir)]
    RT = [np.ascontiguousarray(R[d].T) for d in range(num_dir)]

    def step(d, xp, st):
        h, c = st
        gates = xp + h @ RT[d]
        p = None if peep is None else peep[d]
        if default:
            pj = np.zeros(3 * n, dt) if p is None else np.ascontiguousarray(p)
            return lstm_cell_jit(np.ascontiguousarray(gates), np.ascontiguousarray(c), pj, p is not None,
                                 -1.0 if clip is None else clip, bool(input_forget))
        return lstm_cell_np(gates, c, p, clip, input_forget, *acts[d])

    return _run(step, proj, num_dir, n, direction, sequence_lens, states, layout, out_dtype)


@kernel("GRU", since=1)
def GRU(X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0, linear_before_reset=0,
        output_sequence=0):
    out_dtype = X.dtype
    X, W, R, states, num_dir, n, dt = _common(X, W, R, initial_h, layout, 1)
    B6 = np.zeros((num_dir, 6 * n), dt) if B is None else B.astype(dt)
    acts, default = _activations(activations, activation_alpha, activation_beta, ("Sigmoid", "Tanh"), num_dir)
    clip = _clip_attr(clip)
    # input projection with Wb (all gates) and Rb for z, r; Rbh stays apart (it goes inside r * (...) when lbr)
    proj = [X @ W[d].T + B6[d, :3 * n] + np.concatenate([B6[d, 3 * n:5 * n], np.zeros(n, dt)])
            for d in range(num_dir)]
    RzrT = [np.ascontiguousarray(R[d, :2 * n].T) for d in range(num_dir)]
    RhT = [np.ascontiguousarray(R[d, 2 * n:].T) for d in range(num_dir)]

    def step(d, xp, st):
        (h,) = st
        f, g = acts[d]
        zr = xp[:, :2 * n] + h @ RzrT[d]
        r = f(_clip(zr[:, n:], clip))
        rbh = B6[d, 5 * n:]
        if linear_before_reset:
            hh = xp[:, 2 * n:] + r * (h @ RhT[d] + rbh)
        else:
            hh = xp[:, 2 * n:] + (r * h) @ RhT[d] + rbh
        if default:
            return (gru_update_jit(np.ascontiguousarray(zr[:, :n]), np.ascontiguousarray(hh),
                                   np.ascontiguousarray(h), -1.0 if clip is None else clip),)
        return (gru_update_np(zr[:, :n], hh, h, clip, f, g),)

    return _run(step, proj, num_dir, n, direction, sequence_lens, states, layout, out_dtype)


@kernel("RNN", since=1)
def RNN(X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0, output_sequence=0):
    out_dtype = X.dtype
    X, W, R, states, num_dir, n, dt = _common(X, W, R, initial_h, layout, 1)
    bias = np.zeros((num_dir, n), dt) if B is None else (B[:, :n] + B[:, n:]).astype(dt)
    acts, _ = _activations(activations, activation_alpha, activation_beta, ("Tanh",), num_dir)
    clip = _clip_attr(clip)
    proj = [X @ W[d].T + bias[d] for d in range(num_dir)]
    RT = [np.ascontiguousarray(R[d].T) for d in range(num_dir)]

    def step(d, xp, st):
        return (acts[d][0](_clip(xp + st[0] @ RT[d], clip)),)

    return _run(step, proj, num_dir, n, direction, sequence_lens, states, layout, out_dtype)
