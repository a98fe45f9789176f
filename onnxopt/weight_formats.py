"""Low-bit and non-linear weight formats as data: the ``--weights`` spec, what each format stores, how it decodes.

Formats (``--weights FORMAT``; the plan names them the same way):

- ``int8[:block=N][:asym]``, ``int4[:block=N][:asym]``: affine integers, symmetric ([-7, 7] / [-127, 127], zero
  point 0) or asymmetric (uint4 / uint8 with a zero point), per output channel or in blocks of N (16..256, a power of
  two) along the input axis; decoded by DequantizeLinear (int4 and blocks: opset 21);
- ``ternary``: Ternary Weight Networks: per output channel delta = 0.7 x mean|W|, values sign(W) where |W| > delta
  else 0, alpha = mean |W| above delta; ``binary``: BinaryConnect / XNOR: sign(W) x alpha, alpha = mean|W|. Both
  are stored as INT2 and decoded by DequantizeLinear at opset 25 (alpha is its per-channel scale);
- ``pow2``: logarithmic: weights 0 or +-2^k with k in [kmax-6, kmax] per output channel (kmax from the channel's
  largest weight): 4-bit codes into a 16-entry codebook, times 2^kmax per channel (Cast -> Gather -> Mul);
- ``kmeans:K`` (2 <= K <= 256): Deep Compression weight sharing: K centroids per layer (1-D k-means, linear
  initialisation), indices stored as uint4 (K <= 16) or uint8 (Cast -> Gather).

Options: ``:rtn`` or ``:gptq`` choose the rounding (default: GPTQ-style error compensation from calibration
activations where there are any, else round to nearest); ternary and binary refit alpha by least squares instead.

``Encoded`` carries what the graph stores and ``decode()``, the numpy decoder the ONNX decoder must equal bit for bit;
``storage_bytes`` counts it packed (4-bit values two to a byte). The math of each encoder is in
``weight_codecs``; this module parses specs, registers every format with the plan (``onnxopt.plan``, under
``plan_name``: the spec's name, ``w8[:...]`` for weight-only int8, since the plan's ``int8`` quantizes activations
too) and orders them (``next_format``: the ladder a planner backs a layer off along).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from onnxopt.errors import UserError
from onnxopt.plan import FORMATS, FormatSpec, register_format

KINDS = ("int8", "int4", "ternary", "binary", "pow2", "kmeans")
BLOCKS = (16, 32, 64, 128, 256)
ROUNDINGS = ("auto", "rtn", "gptq")
W8 = "w8"  # weight-only int8, the rung above the 4-bit formats (the plan's ``int8`` quantizes activations too)
_USAGE = "int8|int4[:block=N][:asym]|ternary|binary|pow2|kmeans:K, optionally :rtn or :gptq"


@dataclass(frozen=True)
class WeightSpec:
    """One weight format with its options. ``block``: None = per output channel."""

    kind: str
    block: int | None = None
    asym: bool = False
    k: int = 0
    rounding: str = "auto"

    @property
    def name(self) -> str:
        """The canonical name (what plans and reports use); the rounding is an option, not part of it."""
        if self.kind == "kmeans":
            return f"kmeans:{self.k}"
        parts = [self.kind] + ([f"block={self.block}"] if self.block else []) + (["asym"] if self.asym else [])
        return ":".join(parts)

    @property
    def bits(self) -> int:
        """Bits stored per weight."""
        if self.kind == "kmeans":
            return 4 if self.k <= 16 else 8
        return {"int8": 8, "int4": 4, "ternary": 2, "binary": 2, "pow2": 4}[self.kind]

    @property
    def opset(self) -> int:
        """The lowest default-domain opset whose DequantizeLinear / Cast takes what this format stores."""
        if self.kind in ("ternary", "binary"):
            return 25  # INT2 DequantizeLinear
        if self.kind == "int8" and not self.block:
            return 13
        return 21  # int4/uint4 types, DequantizeLinear block_size

    @property
    def affine(self) -> bool:
        """Decoded by DequantizeLinear (else by a Gather from a codebook)."""
        return self.kind not in ("pow2", "kmeans")


def parse_weights(spec: str) -> WeightSpec:
    """``--weights`` text -> WeightSpec; UserError (one line) on anything malformed. The format is registered with
    the plan under its canonical name."""
    text = (spec or "").strip().lower()
    if text == W8 or text.startswith(W8 + ":"):
        text = "int8" + text[2:]
    head, *opts = text.split(":")
    where = f"--weights {spec}"
    if head not in KINDS:
        raise UserError(f"{where}: unknown weight format {head!r}; use {_USAGE}")
    block, asym, k, rounding = None, False, 0, "auto"
    for opt in opts:
        if opt in ("rtn", "gptq"):
            rounding = opt
        elif opt == "asym" and head in ("int8", "int4"):
            asym = True
        elif opt.startswith("block=") and head in ("int8", "int4"):
            try:
                block = int(opt[6:])
            except ValueError:
                raise UserError(f"{where}: block size {opt[6:]!r} is not a number; use one of {BLOCKS}") from None
            if block not in BLOCKS:
                raise UserError(f"{where}: block size {block} is not supported; use one of {BLOCKS}")
        elif head == "kmeans" and opt.isdigit() and not k:
            k = int(opt)
            if not 2 <= k <= 256:
                raise UserError(f"{where}: kmeans needs 2 <= K <= 256 centroids (got {k}); e.g. kmeans:16")
        else:
            raise UserError(f"{where}: option {opt!r} does not apply to {head}; use {_USAGE}")
    if head == "kmeans" and not k:
        raise UserError(f"{where}: kmeans needs the number of centroids, e.g. kmeans:16")
    out = WeightSpec(head, block, asym, k, rounding)
    register(out)
    return out


def plan_name(spec: WeightSpec) -> str:
    """The name under which the plan knows ``spec``: its own, except weight-only int8, which is ``w8[...]`` (the
    plan's ``int8`` quantizes activations too)."""
    return W8 + spec.name[4:] if spec.kind == "int8" else spec.name


def spec_of_format(name: str) -> WeightSpec | None:
    """The WeightSpec of a plan format name, None when the name is not a weight format of this module."""
    if name == W8 or name.startswith(W8 + ":"):
        return parse_weights("int8" + name[2:])
    if name.split(":")[0] not in KINDS or name.split(":")[0] == "int8":
        return None
    return parse_weights(name)


_RANK = {"int8": 9, "int4": 6, "pow2": 5, "ternary": 2, "binary": 1}


def register(spec: WeightSpec) -> str:
    """Make ``spec`` a plan format (weights only: activations stay float); returns its plan name. The rank orders
    precision (a planner backs a region off to a higher rank)."""
    name = plan_name(spec)
    if name not in FORMATS:
        rank = _RANK.get(spec.kind) or (4 if spec.k > 16 else 3)
        register_format(FormatSpec(name, None, spec.kind if spec.affine else f"uint{spec.bits}", rank,
                                   f"{spec.name} weights ({spec.bits} bits each), float activations"))
    return name


for _s in ("int4", "int4:asym", *(f"int4:block={b}{a}" for b in BLOCKS for a in ("", ":asym")), "ternary",
           "binary", "pow2", *(f"kmeans:{k}" for k in (2, 4, 8, 16, 32, 64, 128, 256))):
    parse_weights(_s)
parse_weights(W8)


def next_format(name: str) -> str | None:
    """The next rung up for a weight format (binary -> ternary -> int4; pow2 and kmeans:K<=16 -> int4; int4 -> w8;
    w8 and kmeans:K>16 -> float); None for a name that is not a weight format."""
    spec = spec_of_format(name)
    if spec is None:
        return None
    if spec.kind == "binary":
        return "ternary"
    if spec.kind in ("ternary", "pow2", "kmeans") and not (spec.kind == "kmeans" and spec.k > 16):
        return "int4"
    if spec.kind == "int4":
        return W8
    return "float"


# ---------------------------------------------------------------------------------------------------- encoded data


@dataclass
class Encoded:
    """What one weight becomes. Affine: ``values`` (ints in the weight's layout), ``scale``/``zero_point`` in
    DequantizeLinear's layout (1-D along ``axis`` per channel, or the weight's rank with ``ceil(D / block)`` along
    ``axis`` when ``block``). Codebook: ``values`` are indices into ``codebook``, times ``scale`` (1-D along ``axis``)
    when it is set (pow2)."""

    spec: WeightSpec
    values: np.ndarray
    axis: int
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    block: int = 0
    codebook: np.ndarray | None = None
    bits: int = 0  # bits stored per value when not the format's own (0: ``spec.bits``)

    def decode(self) -> np.ndarray:
        """The float32 weight the ONNX decoder produces (DequantizeLinear, or Gather [x scale])."""
        if self.codebook is not None:
            w = self.codebook[self.values.astype(np.int64)]
            if self.scale is not None:
                w = w * expand(self.scale, w.shape, self.axis, 0)
            return w.astype(np.float32)
        v = self.values.astype(np.int64)
        if self.zero_point is not None:
            v = v - expand(self.zero_point, v.shape, self.axis, self.block).astype(np.int64)
        return (v.astype(np.float32) * expand(self.scale, v.shape, self.axis, self.block)).astype(np.float32)

    @property
    def storage_bytes(self) -> int:
        """Bytes on disk: values packed at ``spec.bits``, plus scales, zero points and codebook."""
        own = self.bits or self.spec.bits
        total = (self.values.size * own + 7) // 8
        for extra, bits in ((self.scale, 32), (self.codebook, 32), (self.zero_point, own)):
            if extra is not None:
                total += (extra.size * bits + 7) // 8
        return total


def expand(p: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray:
    """A DequantizeLinear parameter broadcast to the weight's shape (per axis, or blocked along ``axis``)."""
    p = np.asarray(p)
    axis = axis % len(shape)
    if block:
        return np.take(np.repeat(p, block, axis=axis), np.arange(shape[axis]), axis=axis)
    if p.ndim == 0 or p.size == 1:
        return np.broadcast_to(p.reshape(()), shape)
    view = [1] * len(shape)
    view[axis] = -1
    return np.broadcast_to(p.reshape(view), shape)


INT_TYPES = {("int8", False): np.dtype(np.int8), ("int8", True): np.dtype(np.uint8),
             ("int4", False): np.dtype(ml_dtypes.int4), ("int4", True): np.dtype(ml_dtypes.uint4)}
INT2 = np.dtype(ml_dtypes.int2)
INT4 = np.dtype(ml_dtypes.int4)
UINT4 = np.dtype(ml_dtypes.uint4)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``values`` (< 2**bits) packed along the last axis, the first value in the lowest bits (ONNX's int4 /
    int2 order, and MatMulNBits's); the last axis is padded with zeros to whole bytes."""
    v = np.asarray(values).astype(np.uint8)
    per = 8 // bits
    if per == 1:
        return v
    pad = (-v.shape[-1]) % per
    if pad:
        v = np.concatenate([v, np.zeros((*v.shape[:-1], pad), np.uint8)], axis=-1)
    v = v.reshape(*v.shape[:-1], -1, per)
    out = np.zeros(v.shape[:-1], np.uint8)
    for i in range(per):
        out |= (v[..., i] & ((1 << bits) - 1)) << (bits * i)
    return out


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_bits``: the first ``count`` unsigned values along the last axis."""
    p = np.asarray(packed, np.uint8)
    per = 8 // bits
    if per == 1:
        return p[..., :count]
    parts = [(p >> (bits * i)) & ((1 << bits) - 1) for i in range(per)]
    return np.stack(parts, axis=-1).reshape(*p.shape[:-1], -1)[..., :count]


__all__ = ["BLOCKS", "Encoded", "W8", "WeightSpec", "expand", "next_format", "pack_bits", "parse_weights",
           "plan_name", "spec_of_format", "unpack_bits"]
