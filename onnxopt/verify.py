"""Run two models on the same inputs and measure how far their outputs are apart.

Engines: onnxruntime (CPU, optimizations as asked) and the reference interpreter (``onnxopt.interp``).
Metrics per output: max abs error, max relative error, cosine, SNR (dB), and top-1 agreement for
classifier-shaped outputs. Integer outputs may be compared in quantization steps.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxopt import host as host_mod
from onnxopt import model_io
from onnxopt.errors import PassError, UserError
from onnxopt.input_checks import check_feed_sizes, check_finite

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

ORT_MAX_INLINE = 1 << 30  # larger models go to onnxruntime through a file
_NUMPY_NUMERIC = {np.dtype(t).name for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                             np.uint32, np.uint64, np.float16, np.float32, np.float64)}


def input_specs(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list[int | str | None]]]:
    """Graph inputs that are not initializers: name -> (numpy dtype, dims with str/None for dynamic ones)."""
    from onnxopt.calibration.data import input_specs_of

    return {name: (dtype, list(shape or ())) for name, (dtype, shape) in input_specs_of(model).items()}


def make_feeds(model: onnx.ModelProto, seed: int = 0, dims: Mapping[str, int] | None = None,
               int_high: int = 2) -> dict[str, np.ndarray]:
    """Deterministic inputs: floats ~ N(0, 1), integers in [0, int_high), dynamic dims from ``dims`` or 1.

    Inputs too large to generate (``input_checks.MAX_INPUT_BYTES`` / ``MAX_FEEDS_BYTES``) raise ``FeedsTooLarge``
    before anything is allocated."""
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    feeds = {}
    specs = {name: (dtype, [d if isinstance(d, int) and d > 0 else int(dims.get(d, 1) if d else 1) for d in shape])
             for name, (dtype, shape) in input_specs(model).items()}
    check_feed_sizes(specs)
    for name, (dtype, concrete) in specs.items():
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        elif dtype.kind in "iu":
            feeds[name] = rng.integers(0, int_high, size=concrete).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.integers(0, 2, size=concrete).astype(bool)
        else:
            raise UserError(f"input '{name}' has dtype {dtype}, which onnxopt cannot generate; pass --inputs x.npz")
    return feeds


def check_feeds(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    """``feeds`` checked against the model's graph inputs before anything runs (the interpreter's own check:
    unknown or missing names, dtype, rank, static dims); a mismatch raises ``UserError`` prefixed by ``origin``."""
    from onnxopt.interp.feeds import spec_of, validate_feeds

    inits = {t.name for t in model.graph.initializer}
    specs = [spec_of(vi) for vi in model.graph.input if vi.name not in inits]
    try:
        return validate_feeds(feeds, specs, optional=inits)
    except UserError as e:
        raise UserError(f"{origin}: {e}") from None


def load_feeds(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` keyed by input name (one feed, no sample axis); UserError when unreadable or
    when a float array holds NaN or Inf (outputs compared on them prove nothing: NaN matches NaN)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such inputs file; give an .npz keyed by input name")
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
    except Exception as e:
        raise UserError(f"{path}: cannot read inputs ({e}); give an .npz keyed by input name") from None
    for name, arr in feeds.items():
        check_finite(arr, f"{path}: input '{name}'", "give finite inputs (outputs compared on NaN/Inf prove nothing)")
    return feeds


def ort_session(model: onnx.ModelProto | str | os.PathLike, *, optimize: bool = True,
                threads: int = 1) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session (a model too large to pass inline goes through a temporary file)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # failures surface as exceptions; no raw runtime log on the console
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # no weight pre-packing either: it copies every weight at load, which only pays over many runs (measured on
        # a 2.5 GiB MLP: 6.8 s and 2.62 GiB peak to load and run once, against 0.4 s and 2.56 GiB without)
        so.add_session_config_entry("session.disable_prepacking", "1")
    providers = ["CPUExecutionProvider"]
    if isinstance(model, onnx.ModelProto):
        if not model_io.is_large(model) and model_io.data_bytes(model) < ORT_MAX_INLINE:
            return ort.InferenceSession(model.SerializeToString(), so, providers=providers)
        # through a file, its weights copied file to file (never serialized whole); onnxruntime maps the data, so
        # the temporary folder may go once the session exists
        staged = model_io.StagedModel(model)
        return ort.InferenceSession(os.fspath(staged), so, providers=providers)
    return ort.InferenceSession(os.fspath(model), so, providers=providers)


def run_model(model: onnx.ModelProto | str | os.PathLike, feeds: Mapping[str, np.ndarray],
              engine: str = "onnxruntime", optimize: bool = True) -> dict[str, np.ndarray]:
    """Outputs by name of ``model`` on ``feeds`` with the chosen engine."""
    if engine == "onnxruntime":
        sess = ort_session(model, optimize=optimize)
        names = [o.name for o in sess.get_outputs()]
        known = {i.name for i in sess.get_inputs()}
        return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in known}), strict=True))
    if engine == "reference":
        from onnxopt.interp import Interpreter

        return Interpreter(model).run(dict(feeds))
    raise UserError(f"unknown engine '{engine}'; use onnxruntime or reference")


@dataclass
class OutputDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    snr_db: float
    top1_agree: float | None
    ok: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def abs_diff(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Elementwise |ref - got| in float64: equal infinities and NaN pairs count 0, other non-finite mismatches inf."""
    r, g = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    with np.errstate(invalid="ignore"):
        d = np.abs(r - g)
    finite = np.isfinite(r) & np.isfinite(g)
    d[~finite & (r != g)] = np.inf
    d[(r == g) | (np.isnan(r) & np.isnan(g))] = 0.0
    return d


def error_stats(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(max abs error, max relative error, cosine) of ``got`` against ``ref``; non-finite values handled."""
    r, g = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    if r.size == 0:
        return 0.0, 0.0, 1.0
    d = abs_diff(r, g)
    max_abs = float(d.max())
    max_rel = float((d / np.maximum(np.abs(np.nan_to_num(r)), np.finfo(np.float64).tiny)).max()) if max_abs else 0.0
    finite = np.isfinite(r) & np.isfinite(g)
    rf, gf = np.where(finite, r, 0.0), np.where(finite, g, 0.0)
    norm = np.linalg.norm(rf) * np.linalg.norm(gf)
    cosine = float(rf @ gf / norm) if norm > 0 else (1.0 if not rf.any() and not gf.any() else 0.0)
    return max_abs, max_rel, cosine


def compare_arrays(name: str, ref: np.ndarray, got: np.ndarray, rtol: float = 1e-4, atol: float = 1e-5,
                   scale: float | None = None, steps: float | None = None) -> OutputDiff:
    """Compare one output.

    With ``steps``, the tolerance is counted in quantization steps: one integer unit for integer outputs,
    ``scale`` (the output's quantization scale) for float outputs of a quantized graph.
    """
    ref, got = np.asarray(ref), np.asarray(got)
    if any(a.dtype.kind not in "OUS" and a.dtype.name not in _NUMPY_NUMERIC for a in (ref, got)):
        ref, got = ref.astype(np.float32), got.astype(np.float32)  # ml_dtypes (int4, float8...) compare as floats
    step = scale
    if steps is not None and step is None:
        if ref.dtype.kind not in "iu":
            raise UserError(f"output '{name}' is {ref.dtype}: a tolerance in steps needs its scale (steps:N@SCALE)")
        step = 1.0
    if step is not None and steps is None:
        steps = 3.0
    if ref.shape != got.shape:
        return OutputDiff(name, tuple(got.shape), float("inf"), float("inf"), 0.0, -float("inf"), None, False,
                          f"shape {got.shape} != reference {ref.shape}")
    if ref.dtype.kind in "OUS" or ref.dtype == bool:
        eq = bool(np.array_equal(ref, got))
        return OutputDiff(name, tuple(ref.shape), 0.0 if eq else 1.0, 0.0 if eq else 1.0, 1.0 if eq else 0.0,
                          float("inf") if eq else 0.0, None, eq)
    if ref.size == 0:
        return OutputDiff(name, tuple(ref.shape), 0.0, 0.0, 1.0, float("inf"), None, True)
    max_abs, max_rel, cosine = error_stats(ref, got)
    r, d = ref.astype(np.float64).ravel(), abs_diff(ref, got)
    finite = np.isfinite(d)
    noise = float(np.sum(d[finite] ** 2))
    snr = float(10 * np.log10(np.sum(np.nan_to_num(r[finite]) ** 2) / noise)) if noise > 0 else float("inf")
    top1 = None
    if ref.ndim >= 2 and ref.shape[-1] > 1 and ref.dtype.kind == "f":
        top1 = float(np.mean(ref.reshape(-1, ref.shape[-1]).argmax(-1) == got.reshape(-1, ref.shape[-1]).argmax(-1)))
    if step is not None:
        ok = bool(np.all(d <= steps * step + 1e-12))
    else:
        ok = bool(np.all(d <= atol + rtol * np.abs(np.nan_to_num(r))))
    return OutputDiff(name, tuple(ref.shape), max_abs, max_rel, cosine, snr, top1, ok)


def compare_outputs(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], rtol: float = 1e-4,
                    atol: float = 1e-5, per_output: Mapping[str, Mapping[str, float]] | None = None
                    ) -> list[OutputDiff]:
    per_output = per_output or {}
    diffs = []
    for name, r in ref.items():
        if name not in got:
            diffs.append(OutputDiff(name, tuple(np.shape(r)), float("inf"), float("inf"), 0.0, -float("inf"), None,
                                    False, "missing in the second model"))
            continue
        tol = {"rtol": rtol, "atol": atol, **per_output.get(name, {})}
        diffs.append(compare_arrays(name, r, got[name], **tol))
    return diffs


def format_diffs(diffs: list[OutputDiff]) -> str:
    lines = [f"{'output':<28} {'shape':<18} {'max_abs':>10} {'max_rel':>10} {'cosine':>10} {'snr_db':>8}  ok"]
    for d in diffs:
        lines.append(f"{d.name[:28]:<28} {str(list(d.shape))[:18]:<18} {d.max_abs:>10.3g} {d.max_rel:>10.3g} "
                     f"{d.cosine:>10.6f} {d.snr_db:>8.1f}  {'yes' if d.ok else 'NO'}{'  ' + d.note if d.note else ''}")
    return "\n".join(lines)


def make_pass_verifier(original: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None,
                       engine: str = "onnxruntime", rtol: float = 1e-3, atol: float = 1e-4
                       ) -> Callable[[onnx.ModelProto, str, bool], dict[str, Any]]:
    """A PassManager instrument: after each changed pass, compare the model's outputs with the original's.

    Lossless passes must stay within tolerance, or the run stops with an error naming the pass; lossy passes
    have their error recorded in the report.
    """
    feeds = dict(feeds) if feeds is not None else make_feeds(original)
    reference = run_model(original, feeds, engine)

    def verifier(model: onnx.ModelProto, pass_name: str, lossless: bool) -> dict[str, Any]:
        try:
            outputs = run_model(model, feeds, engine)
        except Exception as e:
            raise PassError(f"pass {pass_name} broke the model: it no longer runs in {engine}: "
                            f"{str(e).splitlines()[0]}") from e
        diffs = compare_outputs(reference, outputs, rtol=rtol, atol=atol)
        if lossless and not all(d.ok for d in diffs):
            raise PassError(f"pass {pass_name} changed the outputs beyond tolerance:\n{format_diffs(diffs)}")
        return {"pass": pass_name, "engine": engine, "host": host_mod.current_host().label(),
                "outputs": [d.to_dict() for d in diffs]}

    return verifier
