"""Second moments of layer inputs on calibration data: H = sum over rows of x x^T, per weighted layer.

What GPTQ-style rounding and the least-squares refit of ternary / binary scales need (``weight_codecs``). The
inputs of the layers asked for become extra outputs of a copy of the model, which onnxruntime runs on each
calibration sample; each input is folded into its H as it arrives, so memory does not grow with the number of samples:

- MatMul / Gemm: the rows of the input [..., K] (K = the weight's input dimension);
- Conv (2-D, group 1, explicit pads): im2col rows [C x kh x kw], in the order of ``W.reshape(O, -1)``;
- at most ``rows_per_sample`` rows of each sample (a seeded choice), and no more than needed for ``ROWS_PER_INPUT``
  rows per input dimension over all samples, so a large feature map costs no more than a small one;
- requests are run in chunks whose Hessians together stay under ``max_bytes`` (the calibration data is read once per
  chunk), so a large network never holds all of its Hessians at once.

Only main-graph tensors can be captured (``capturable`` says why not otherwise); H is float64.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

log = logging.getLogger(__name__)

ROWS_PER_SAMPLE = 4096
ROWS_PER_INPUT = 16  # rows over all samples per input dimension: H well conditioned, and no more work than that
MAX_BYTES = 256 << 20


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class HessianRequest:
    """One layer's input: ``tensor`` (a main-graph activation), its input width ``k``, Conv geometry or None."""

    key: str
    tensor: str
    k: int
    conv: ConvGeometry | None = None


def conv_geometry(attrs: Mapping[str, object], kernel: Sequence[int]) -> tuple[ConvGeometry | None, str | None]:
    """The geometry of a 2-D Conv, or (None, why its input rows cannot be formed here)."""
    if len(kernel) != 2:
        return None, "only 2-D convolutions have im2col rows here"
    if int(attrs.get("group", 1)) != 1:
        return None, "grouped convolution (one Hessian per group is not formed)"
    if str(attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        return None, "auto_pad SAME_* (explicit pads only)"
    pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
    return ConvGeometry((int(kernel[0]), int(kernel[1])), tuple(int(s) for s in attrs.get("strides", (1, 1))),
                        pads, tuple(int(d) for d in attrs.get("dilations", (1, 1)))), None  # type: ignore[arg-type]


def im2col(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """[N*OH*OW, C*kh*kw] patch rows of ``x`` [N, C, H, W], columns ordered (channel, kernel row, kernel column)."""
    kh, kw = g.kernel
    sh, sw = g.strides
    dh, dw = g.dilations
    t, left, b, r = g.pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = [xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]
    p = np.stack(cols, axis=2)  # [N, C, kh*kw, OH, OW]
    return p.transpose(0, 3, 4, 1, 2).reshape(-1, x.shape[1] * kh * kw)


def rows_of(value: np.ndarray, req: HessianRequest, rng: np.random.Generator, limit: int) -> np.ndarray:
    """The input rows of one sample for ``req`` (at most ``limit``, chosen by ``rng``)."""
    v = np.asarray(value, dtype=np.float32)
    rows = im2col(v, req.conv) if req.conv is not None else v.reshape(-1, v.shape[-1])
    if rows.shape[1] != req.k:
        raise ValueError(f"input rows of width {rows.shape[1]}, expected {req.k}")
    if rows.shape[0] > limit:
        rows = rows[np.sort(rng.choice(rows.shape[0], limit, replace=False))]
    return rows


def _chunks(requests: Sequence[HessianRequest], max_bytes: int) -> Iterator[list[HessianRequest]]:
    chunk: list[HessianRequest] = []
    used = 0
    for req in requests:
        size = 8 * req.k * req.k
        if chunk and used + size > max_bytes:
            yield chunk
            chunk, used = [], 0
        chunk.append(req)
        used += size
    if chunk:
        yield chunk


def _with_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names
                          if n not in have)
    return m


def layer_hessians(proto: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]],
                   requests: Sequence[HessianRequest], rows_per_sample: int = ROWS_PER_SAMPLE,
                   max_bytes: int = MAX_BYTES, seed: int = 0) -> dict[str, np.ndarray]:
    """``{request key: H}`` over ``feeds``; requests sharing a tensor and geometry share one H (one computation)."""
    from onnxopt.verify import ort_session

    unique: dict[tuple[str, int, ConvGeometry | None], HessianRequest] = {}
    for r in requests:
        unique.setdefault((r.tensor, r.k, r.conv), r)
    out: dict[tuple[str, int, ConvGeometry | None], np.ndarray] = {}
    for chunk in _chunks(list(unique.values()), max_bytes):
        names = list(dict.fromkeys(r.tensor for r in chunk))
        sess = ort_session(_with_outputs(proto, names))
        known = {i.name for i in sess.get_inputs()}
        acc = {(r.tensor, r.k, r.conv): np.zeros((r.k, r.k), np.float64) for r in chunk}
        rng = np.random.default_rng(seed)
        limit = {id(r): min(rows_per_sample, max(256, -(-ROWS_PER_INPUT * r.k // max(1, len(feeds))))) for r in chunk}
        for feed in feeds:
            values = dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in known}), strict=True))
            for r in chunk:
                x = rows_of(values[r.tensor], r, rng, limit[id(r)]).astype(np.float64)
                acc[(r.tensor, r.k, r.conv)] += x.T @ x
        out.update(acc)
        log.debug("input Hessians of %d layers over %d samples", len(chunk), len(feeds))
    return {r.key: out[(r.tensor, r.k, r.conv)] for r in requests}


__all__ = ["ConvGeometry", "HessianRequest", "conv_geometry", "im2col", "layer_hessians"]
