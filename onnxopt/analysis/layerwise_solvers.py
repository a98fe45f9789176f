"""Solvers of the layer-wise engine (``layerwise``): all of them fit ``x @ w (+ b) ~ y`` one layer at a time.

- ``ridge`` / ``ridge_grouped`` / ``fit_cv``: ridge least squares towards the current weights, the strength chosen
  on held-out samples (pruning's reconstruction);
- ``Quadratic``: the output error ``sum_p (x_p w_c - y_pc)^2`` of each output channel as a function of the weights,
  accumulated from streamed rows (``x'x``, ``x'y``, ``y'y``; the rows themselves while they are fewer than the
  unknowns, which is cheaper); ``SoftmaxKL``: the KL divergence between temperature-softened float and fitted
  outputs of a classifier's last layer, over its rows (one per sample);
- ``Grid``: the integer grid of a quantized weight (``w = scale * (q - zero_point)``, ``q`` in ``[qmin, qmax]``);
- ``search_scales`` (SeqMSE): per output channel (or per tensor) the clipping scale, from a grid of fractions of the
  current scale, that minimizes the output error with nearest rounding;
- ``adaround`` (AdaRound, Nagel et al. 2020): learn for every weight whether it rounds up or down, through the
  rectified sigmoid ``h(V)``, by Adam on the output error plus a regularizer that pushes ``h`` to 0 or 1 (its
  exponent annealed from 20 to 2 after a warm-up); the number of iterations is bounded by a budget of
  multiply-adds, so a layer's time is bounded by its size, not by a clock (the result is deterministic).

numpy (BLAS does the products) and numba (AdaRound's element-wise update); every objective is evaluated on all
groups of a grouped conv at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def ridge(x: np.ndarray, y: np.ndarray, w0: np.ndarray, alpha: float) -> np.ndarray:
    """argmin ||y - x w||^2 + lam ||w - w0||^2 with lam = alpha * mean diag(x'x); primal or dual form."""
    x, y, w0 = x.astype(np.float64), y.astype(np.float64), w0.astype(np.float64)
    r, k = x.shape
    resid = y - x @ w0
    lam = alpha * float(np.einsum("ij,ij->", x, x)) / max(k, 1) + 1e-8
    if k <= r:
        return w0 + np.linalg.solve(x.T @ x + lam * np.eye(k), x.T @ resid)
    return w0 + x.T @ np.linalg.solve(x @ x.T + lam * np.eye(r), resid)


def ridge_grouped(x: np.ndarray, y: np.ndarray, w0: np.ndarray, alpha: float) -> np.ndarray:
    """``ridge`` for a batch of independent fits: x [g, P, k], y [g, P, c], w0 [g, k, c] (primal form)."""
    xt = x.transpose(0, 2, 1)
    xtx = xt @ x                                                     # batched BLAS: einsum was 10x slower here
    lam = alpha * np.trace(xtx, axis1=1, axis2=2) / x.shape[2] + 1e-8
    rhs = xt @ (y - x @ w0)
    return w0 + np.linalg.solve(xtx + lam[:, None, None] * np.eye(x.shape[2]), rhs)


def fit_cv(solve: Callable[..., np.ndarray], x: np.ndarray, y: np.ndarray, w0: np.ndarray, alpha: float | None,
           held: np.ndarray, axis: int = 0) -> np.ndarray:
    """``solve(x, y, w0, alpha)`` with ``alpha`` given, or chosen from ``ALPHAS`` by the error on the ``held`` rows
    (whole calibration samples, along ``axis``) of a fit on the others, then refitted on all rows. Deep layers see
    few distinct positions (7x7 per sample) for up to a thousand weights per output: a fixed small ridge interpolates
    the calibration data there and generalizes worse than the pruned weights did."""
    if alpha is None and 0 < held.sum() < len(held):
        xt, yt = np.compress(~held, x, axis), np.compress(~held, y, axis)
        xh, yh = np.compress(held, x, axis), np.compress(held, y, axis)

        def err(a: float) -> float:
            sol = solve(xt, yt, w0, a)
            return float(np.sum((yh - (xh @ sol)) ** 2))

        alpha = min(ALPHAS, key=err)
    return solve(x, y, w0, 0.01 if alpha is None else alpha)


class Quadratic:
    """Per output channel, ``e_c(w) = sum_p (x_p . w_c - y_pc)^2`` for x [g, P, k], y [g, P, cg], from rows
    added in chunks (``add``). Rows are kept while there are fewer than ``k`` (then ``x w`` is cheaper than
    ``(x'x) w``); past that only ``x'x``, ``x'y`` and ``y'y`` (float64), whatever the number of rows."""

    def __init__(self, groups: int, k: int, cg: int):
        self.g, self.k, self.cg = groups, k, cg
        self.rows = 0
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self.h: np.ndarray | None = None
        self.gy = np.zeros((groups, k, cg))
        self.yy = np.zeros((groups, cg))
        self.ysq_total = 0.0
        self._h32: np.ndarray | None = None

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Rows x [g, P, k] and targets y [g, P, cg]."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        self._h32 = None
        self.rows += x.shape[1]
        xt = x.transpose(0, 2, 1)
        self.gy += xt @ y
        self.yy += np.einsum("gpc,gpc->gc", y, y)
        if self.h is None and self.rows < self.k:
            self._x.append(x)
            self._y.append(y)
            return
        if self.h is None:
            self.h = np.zeros((self.g, self.k, self.k))
            for xs in self._x:
                self.h += xs.transpose(0, 2, 1) @ xs
            self._x, self._y = [], []
        self.h += xt @ x

    @property
    def cost(self) -> float:
        """Multiply-adds of one ``errors`` or ``grad`` call."""
        inner = self.k if self.h is not None else max(self.rows, 1)
        return float(self.g * self.k * inner * self.cg)

    def _rows(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self._x) != 1:  # joined once, on first use
            self._x = [np.concatenate(self._x, axis=1) if self._x else np.zeros((self.g, 0, self.k))]
            self._y = [np.concatenate(self._y, axis=1) if self._y else np.zeros((self.g, 0, self.cg))]
        return self._x[0], self._y[0]

    def h32(self) -> np.ndarray | None:
        """``x'x`` in float32 (made once; the products of AdaRound's gradient and of the scale search)."""
        if self.h is None:
            return None
        if self._h32 is None:
            self._h32 = self.h.astype(np.float32)
        return self._h32

    def errors(self, w: np.ndarray, fast: bool = False) -> np.ndarray:
        """[g, cg]: the output error of each channel with weights w [g, k, cg]. ``fast``: the product with ``x'x``
        in float32 (relative error ~1e-6 of ``y'y``, for ranking candidates that differ by more)."""
        if self.h is not None:
            hw = _mm(self.h32(), w.astype(np.float32)).astype(np.float64) if fast else _mm(self.h, w)
            return np.einsum("gkc,gkc->gc", w, hw) - 2 * np.einsum("gkc,gkc->gc", w, self.gy) + self.yy
        x, y = self._rows()
        d = _mm(x, w) - y
        return np.einsum("gpc,gpc->gc", d, d)

    def grad(self, w: np.ndarray) -> np.ndarray:
        """d sum(errors) / d w."""
        if self.h is not None:
            return 2 * (_mm(self.h, w) - self.gy)
        x, y = self._rows()
        return 2 * _mm(x.transpose(0, 2, 1), _mm(x, w) - y)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched a @ b; one group goes through a 2-D product (numpy's stacked matmul was 6x slower for it)."""
    if a.shape[0] == 1:
        return (a[0] @ b[0])[None]
    return a @ b


class SoftmaxKL:
    """``T^2 * sum_p KL(softmax(y_p / T) || softmax((x_p w + b) / T))`` for a classifier's last layer (one group;
    rows are samples). ``errors`` gives the total for every channel (it does not split by channel)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, bias: np.ndarray, temperature: float = 4.0):
        self.x = np.asarray(x, dtype=np.float64)[0]
        self.b = np.asarray(bias, dtype=np.float64).reshape(-1)
        self.t = float(temperature)
        z = np.asarray(y, dtype=np.float64)[0] / self.t
        self.p = _softmax(z)
        self.logp = np.log(np.maximum(self.p, 1e-300))
        self.g, self.k, self.cg = 1, self.x.shape[1], self.p.shape[1]

    @property
    def cost(self) -> float:
        return float(2 * self.x.shape[0] * self.k * self.cg)

    def _q(self, w: np.ndarray) -> np.ndarray:
        return _softmax((self.x @ w[0] + self.b) / self.t)

    def errors(self, w: np.ndarray) -> np.ndarray:
        q = self._q(w)
        kl = float(np.sum(self.p * (self.logp - np.log(np.maximum(q, 1e-300))))) * self.t ** 2
        return np.full((1, self.cg), kl / self.cg)

    def grad(self, w: np.ndarray) -> np.ndarray:
        q = self._q(w)
        return (self.x.T @ (q - self.p) * self.t)[None]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


Objective = Quadratic | SoftmaxKL


@dataclass
class Grid:
    """``w = scale * (q - zero_point)`` with integer ``q`` in ``[qmin, qmax]``; scale and zero point broadcast
    against the weight matrix [g, k, cg] (shape [g, 1, cg], or [1, 1, 1] per tensor)."""

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int

    def nearest(self, w: np.ndarray) -> np.ndarray:
        """Round to nearest (half to even, as QuantizeLinear does), clipped to the range."""
        return np.clip(np.rint(w / self.scale) + self.zero_point, self.qmin, self.qmax)

    def value(self, q: np.ndarray) -> np.ndarray:
        return self.scale * (q - self.zero_point)

    def scaled(self, alpha: np.ndarray | float) -> Grid:
        return Grid(self.scale * alpha, self.zero_point, self.qmin, self.qmax)


ALPHA_GRID = tuple(np.round(np.linspace(0.5, 1.0, 26), 3))


def search_scales(obj: Objective, w: np.ndarray, grid: Grid, per_channel: bool,
                  alphas: tuple[float, ...] = ALPHA_GRID) -> tuple[Grid, np.ndarray]:
    """SeqMSE: the fraction of the current scale in ``alphas`` that minimizes the output error with nearest rounding,
    per output channel when ``per_channel`` (the scale has one entry per channel), else one for the tensor.
    Returns the new grid and the chosen fractions."""
    def err(g: Grid) -> np.ndarray:
        wq = g.value(g.nearest(w))
        return obj.errors(wq, fast=True) if isinstance(obj, Quadratic) else obj.errors(wq)

    errs = np.stack([err(g) for g in (grid.scaled(a) for a in alphas)])  # [A, g, cg]
    if per_channel and not isinstance(obj, SoftmaxKL):
        best = np.asarray(alphas)[np.argmin(errs, axis=0)][:, None, :]       # [g, 1, cg]
    else:
        best = np.full((1, 1, 1), alphas[int(np.argmin(errs.sum(axis=(1, 2))))])
    return grid.scaled(best), best


ZETA, GAMMA = 1.1, -0.1


@numba.njit(cache=True, inline="always")
def _soft_at(i: int, v: np.ndarray, floor: np.ndarray, scale: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             wq: np.ndarray, h: np.ndarray, dh: np.ndarray, gate: np.ndarray) -> None:
    """Element ``i`` of ``_soft``."""
    s = 1.0 / (1.0 + np.exp(-v[i]))
    raw = s * (ZETA - GAMMA) + GAMMA
    if raw <= 0.0:
        hv, d = 0.0, 0.0
    elif raw >= 1.0:
        hv, d = 1.0, 0.0
    else:
        hv, d = raw, s * (1.0 - s) * (ZETA - GAMMA)
    q = floor[i] + hv
    inside = lo[i] <= q <= hi[i]
    wq[i] = scale[i] * min(max(q, lo[i]), hi[i])
    h[i], dh[i], gate[i] = hv, d, scale[i] if inside else 0.0


@numba.njit(cache=True)
def _soft(v: np.ndarray, floor: np.ndarray, scale: np.ndarray, lo: np.ndarray, hi: np.ndarray, wq: np.ndarray,
          h: np.ndarray, dh: np.ndarray, gate: np.ndarray) -> None:
    """Soft weights ``wq = scale * clip(floor + h(V), lo, hi)`` of AdaRound's rectified sigmoid ``h``, its
    derivative ``dh`` (0 where clipped) and ``gate = scale`` where the integer lies in the range, else 0."""
    for i in range(v.size):
        _soft_at(i, v, floor, scale, lo, hi, wq, h, dh, gate)


@numba.njit(cache=True)
def _adam_soft(v: np.ndarray, gw: np.ndarray, floor: np.ndarray, scale: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               wq: np.ndarray, h: np.ndarray, dh: np.ndarray, gate: np.ndarray, m1: np.ndarray, m2: np.ndarray,
               inv_norm: float, reg: float, beta: float, lr: float, t: int) -> None:
    """One Adam step on V, then ``_soft`` of the new V, element by element in one pass: the gradient of the output
    error (``gw``, per soft weight, times ``inv_norm``) and, when ``reg`` > 0, of ``reg * sum(1 - |2h - 1|^beta)``,
    through ``h``. A weight whose ``h`` is clipped (``dh`` = 0) has a zero gradient: its regularizer term (a power)
    is not computed."""
    c1, c2 = 1.0 - 0.9 ** (t + 1), 1.0 - 0.999 ** (t + 1)
    for i in range(v.size):
        g = 0.0
        if dh[i] != 0.0:
            gh = gw[i] * inv_norm * gate[i]
            if reg > 0.0:
                u = 2.0 * h[i] - 1.0
                au = abs(u)
                if au > 0.0:
                    gh -= reg * beta * au ** (beta - 1.0) * (1.0 if u > 0 else -1.0) * 2.0
            g = gh * dh[i]
        m1[i] = 0.9 * m1[i] + 0.1 * g
        m2[i] = 0.999 * m2[i] + 0.001 * g * g
        v[i] -= lr * (m1[i] / c1) / (np.sqrt(m2[i] / c2) + 1e-8)
        _soft_at(i, v, floor, scale, lo, hi, wq, h, dh, gate)


@dataclass(frozen=True)
class AdaRoundConfig:
    iterations: int = 500
    min_iterations: int = 100
    budget: float = 3e10  # multiply-adds per layer (a weight's element-wise update counts 300): bounds its time
    reg: float = 30.0  # regularizer weight (its mean over weights), relative to the error with nearest rounding
    lr: float = 0.1
    warmup: float = 0.2
    beta: tuple[float, float] = (20.0, 2.0)

    def steps(self, cost: float, weights: int) -> int:
        per_step = cost + 300.0 * weights
        return int(min(self.iterations, max(self.min_iterations, self.budget / max(per_step, 1.0))))


def adaround(obj: Objective, w: np.ndarray, grid: Grid, cfg: AdaRoundConfig = AdaRoundConfig()) -> np.ndarray:
    """Integer weights [g, k, cg] on ``grid`` whose rounding (up or down, per weight) was learned to minimize
    ``obj``; starts from the float weights (``h(V)`` = the fractional part). The gradient of a ``Quadratic`` with
    its ``x'x`` is taken in float32 (twice the BLAS speed; the Adam steps need no more), errors in float64.

    No early stop: measured on random 4-bit problems, the hard rounding's error rises after the warm-up and comes
    down only as the regularizer's exponent anneals, so a run stopped when it stalls kept a rounding worse than
    nearest on held-out rows."""
    shape = w.shape
    full = np.broadcast_to
    scale = np.ascontiguousarray(full(grid.scale, shape), np.float64).ravel()
    zp = full(grid.zero_point, shape)
    lo = np.ascontiguousarray(grid.qmin - zp, np.float64).ravel()
    hi = np.ascontiguousarray(grid.qmax - zp, np.float64).ravel()
    wd = (w / grid.scale).ravel()
    floor = np.floor(wd)
    rest = np.clip(wd - floor, 1e-4, 1 - 1e-4)
    v = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)
    inv_norm = 1.0 / max(float(obj.errors(grid.value(grid.nearest(w))).sum()), 1e-30)
    wq, h, dh, gate = (np.empty_like(v) for _ in range(4))
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    steps = cfg.steps(obj.cost, v.size)
    warm = int(cfg.warmup * steps)
    grad = _grad32(obj)
    _soft(v, floor, scale, lo, hi, wq, h, dh, gate)
    for t in range(steps):
        gw = np.ascontiguousarray(grad(wq.reshape(shape)), np.float64).ravel()
        beta, reg = 0.0, 0.0
        if t >= warm:
            beta = cfg.beta[0] + (cfg.beta[1] - cfg.beta[0]) * (t - warm) / max(steps - warm - 1, 1)
            reg = cfg.reg / v.size
        _adam_soft(v, gw, floor, scale, lo, hi, wq, h, dh, gate, m1, m2, inv_norm, reg, beta, cfg.lr, t)
    q = floor + (v >= 0)
    return np.clip(q.reshape(shape) + grid.zero_point, grid.qmin, grid.qmax)


def _grad32(obj: Objective) -> Callable[[np.ndarray], np.ndarray]:
    """``obj.grad``, in float32 for a Quadratic that holds ``x'x`` (the products dominate AdaRound's time)."""
    if not isinstance(obj, Quadratic) or obj.h is None:
        return obj.grad
    h32, gy32 = obj.h32(), obj.gy.astype(np.float32)

    def grad(w: np.ndarray) -> np.ndarray:
        return 2 * (_mm(h32, w.astype(np.float32)) - gy32)

    return grad
