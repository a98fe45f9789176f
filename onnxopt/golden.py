"""Golden outputs: record a model's outputs on given inputs once, check them later (on any machine).

A golden file is an ``.npz`` (no pickles) holding the inputs, the outputs, and a JSON ``meta`` entry with the
engine that produced them, the onnxopt version and the sha256 of the model file. Floats are compared with
tolerances, never bit equality; integer outputs exactly, or within N quantization steps when asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt import __version__, verify
from onnxopt.errors import UserError
from onnxopt.input_checks import check_finite
from onnxopt.model_io import check_writable, load_model

log = logging.getLogger(__name__)

ENGINES = ("reference", "onnxruntime")
FORMAT = 1


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_model(model_path: str | Path, inputs: Mapping[str, np.ndarray], engine: str) -> dict[str, np.ndarray]:
    """Outputs of the model by name, from the interpreter or onnxruntime (graph optimizations off, 1 thread)."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    return dict(verify.run_model(str(model_path), inputs, engine, optimize=False))


def _pack(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """Arrays of non-builtin dtypes (ml_dtypes int4, float8...) are stored as raw bytes plus their dtype name."""
    arr = np.asarray(arr)
    if not arr.dtype.type.__module__.startswith("ml_dtypes"):
        return arr, ""
    return arr.view(np.dtype(f"u{arr.dtype.itemsize}")), arr.dtype.name


def _unpack(arr: np.ndarray, dtype_name: str) -> np.ndarray:
    if not dtype_name:
        return arr
    import ml_dtypes

    return arr.view(np.dtype(getattr(ml_dtypes, dtype_name)))


def record(model_path: str | Path, inputs: Mapping[str, np.ndarray], out_path: str | Path,
           engine: str = "reference") -> dict[str, np.ndarray]:
    """Run the model on ``inputs`` with ``engine`` and write the golden ``.npz`` to ``out_path``; returns outputs."""
    model_path, out_path = Path(model_path), Path(out_path)
    check_writable(out_path)
    inputs = verify.check_feeds(load_model(model_path, load_external=False), inputs,
                                f"the inputs do not fit {model_path.name}")
    for name, arr in inputs.items():  # a golden recorded on NaN/Inf matches anything that also gives NaN
        check_finite(arr, f"golden input '{name}'", "record the golden on finite inputs")
    outputs = run_model(model_path, inputs, engine)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"format": FORMAT, "engine": engine, "onnxopt_version": __version__,
                            "model_sha256": sha256_file(model_path), "model_name": model_path.name,
                            "inputs": [], "outputs": []}
    for kind, tensors in (("inputs", inputs), ("outputs", outputs)):
        for i, (name, arr) in enumerate(tensors.items()):
            packed, dt = _pack(arr)
            key = f"{kind[:-1]}_{i}"
            arrays[key] = packed
            meta[kind].append({"name": name, "key": key, "dtype": dt})
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = out_path.with_name(out_path.name + ".tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        tmp.replace(out_path)
    except OSError as e:
        raise UserError(f"{out_path}: could not write the golden file ({e.strerror or e}); choose another path"
                        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("recorded %d outputs of %s with %s into %s", len(outputs), model_path.name, engine, out_path)
    return outputs


@dataclass
class Golden:
    meta: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def load(golden_path: str | Path) -> Golden:
    """Read a golden file; a missing, corrupt or foreign file raises UserError."""
    golden_path = Path(golden_path)
    try:
        with np.load(golden_path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError(f"golden file {golden_path} does not exist; record it with `onnxopt golden record`") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"golden file {golden_path} is unreadable ({e}); record it again") from None
    if "meta" not in data:
        raise UserError(f"{golden_path} is not an onnxopt golden file (no meta entry); record it again")
    try:
        meta = json.loads(str(data["meta"]))
        ins = {e["name"]: _unpack(data[e["key"]], e["dtype"]) for e in meta["inputs"]}
        outs = {e["name"]: _unpack(data[e["key"]], e["dtype"]) for e in meta["outputs"]}
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"golden file {golden_path} is damaged ({e!r} missing or wrong); record it again") from None
    return Golden(meta, ins, outs)


@dataclass
class OutputCheck:
    name: str
    shape: tuple
    dtype: str
    max_abs: float
    max_rel: float
    cosine: float
    ok: bool
    limit: str
    reason: str = ""


@dataclass
class GoldenReport:
    model: str
    golden: str
    engine: str
    sha_match: bool
    rows: list[OutputCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        head = (f"{'output':<24} {'shape':<18} {'dtype':<8} {'max abs':>10} {'max rel':>10} {'cosine':>10} "
                f"{'limit':<26} ok")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.name[:24]:<24} {str(r.shape)[:18]:<18} {r.dtype:<8} {r.max_abs:>10.3g} {r.max_rel:>10.3g}"
                         f" {r.cosine:>10.6f} {r.limit[:26]:<26} {'yes' if r.ok else 'NO ' + r.reason}")
        return "\n".join(lines)

    def __str__(self) -> str:
        status = "matches" if self.ok else "DOES NOT match"
        sha = "" if self.sha_match else " (model file differs from the one recorded)"
        return f"{self.model} {status} {self.golden} [engine {self.engine}]{sha}\n{self.table()}"


def compare(name: str, got: np.ndarray, want: np.ndarray, *, rtol: float, atol: float, steps: int = 0,
            scale: float | None = None) -> OutputCheck:
    """One output: integers exact or within ``steps``; floats within ``atol + rtol*|want|`` (``atol`` is
    ``steps * scale`` when a quantization ``scale`` is given for a float output)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.dtype.kind not in "biuf" or want.dtype.kind not in "biuf":
        got, want = got.astype(np.float32), want.astype(np.float32)  # ml_dtypes (int4, float8) and friends
    if got.shape != want.shape:
        return OutputCheck(name, want.shape, str(want.dtype), np.inf, np.inf, 0.0, False, "",
                           f"shape {got.shape} != recorded {want.shape}")
    max_abs, max_rel, cos = verify.error_stats(want, got)
    if want.dtype.kind in "biu":
        limit = f"|diff| <= {steps} step(s)"
        return OutputCheck(name, want.shape, str(want.dtype), max_abs, max_rel, cos, max_abs <= steps, limit,
                           "" if max_abs <= steps else "integer outputs differ")
    if scale is not None and steps:
        atol = max(atol, steps * float(scale))
    g, w = got.astype(np.float64), want.astype(np.float64)
    bad = ~np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    ok = not bad.any()
    return OutputCheck(name, want.shape, str(want.dtype), max_abs, max_rel, cos, ok, f"rtol={rtol:g} atol={atol:g}",
                       "" if ok else f"{int(bad.sum())}/{bad.size} elements out of tolerance")


def check(model_path: str | Path, golden_path: str | Path, engine: str | None = None, *, rtol: float = 1e-4,
          atol: float = 1e-5, per_output: Mapping[str, Mapping[str, float]] | None = None, int_steps: int = 0,
          strict: bool = False) -> GoldenReport:
    """Run the model on the recorded inputs and compare with the recorded outputs.

    ``per_output`` maps an output name to overrides: ``rtol``, ``atol``, ``steps`` and ``scale`` (a float output
    that is the dequantization of an integer one passes within ``steps * scale``). ``int_steps`` is the default
    tolerance of integer outputs in quantization steps. A model whose sha256 differs from the recorded one only
    warns unless ``strict``.
    """
    model_path = Path(model_path)
    proto = load_model(model_path, load_external=False)
    g = load(golden_path)
    engine = engine or g.meta.get("engine", "reference")
    sha = sha256_file(model_path)
    sha_match = sha == g.meta.get("model_sha256")
    if not sha_match:
        msg = (f"{model_path.name} is not the model file {golden_path} was recorded from "
               f"(sha256 {sha[:12]} vs {str(g.meta.get('model_sha256'))[:12]})")
        if strict:
            raise UserError(msg + "; record the golden again or drop strict")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    inputs = verify.check_feeds(proto, g.inputs, f"{golden_path} was recorded from {g.meta.get('model_name')}, "
                                f"whose inputs do not fit {model_path.name}")
    outs = run_model(model_path, inputs, engine)
    missing = [n for n in g.outputs if n not in outs]
    if missing:
        raise UserError(f"{model_path.name} has no output(s) {', '.join(missing)} recorded in {golden_path}; "
                        f"it has {', '.join(outs)}: record the golden again")
    per_output = per_output or {}
    unknown = set(per_output) - set(g.outputs)
    if unknown:
        raise UserError(f"tolerances given for unknown output(s) {', '.join(sorted(unknown))}")
    report = GoldenReport(str(model_path), str(golden_path), engine, sha_match)
    for name, want in g.outputs.items():
        o = per_output.get(name, {})
        report.rows.append(compare(name, outs[name], want, rtol=o.get("rtol", rtol), atol=o.get("atol", atol),
                                   steps=int(o.get("steps", int_steps)), scale=o.get("scale")))
    return report
