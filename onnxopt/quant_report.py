"""Calibration data for a pipeline run, and the quantization report that comes out of it.

``open_calibration(proto, ctx)`` opens ``options["calibration"]`` (an .npz, a directory of .npz, a reader, an
iterable of feeds) against the model's inputs, checks every sample at once when the data can be read again
(so a missing input name or a NaN fails before any work; read-once data is checked as it streams), keeps
at most ``options["calib_samples"]`` samples, holds some back for fidelity (``options["calib_holdout"]``;
default one in five, at most 32, when at least 10 samples are known to be there) and puts the rest in
``ctx.calibration``.

``quantization_report(before, after, ctx, held)``: the mode that ran; per quantized tensor its range, scale
and zero point (weights: per-channel scale span); per output the fidelity against the float model on the
held-back samples (cosine, SNR, max abs error; onnxruntime); model size before and after; ``clipped`` per
activation and ``histograms`` of the most clipped ones (``onnxopt.clipping``).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import onnx

from onnxopt.calibration import CalibrationData, input_specs_of, open_calibration_data
from onnxopt.calibration.data import require_finite
from onnxopt.clipping import clipping_report
from onnxopt.errors import UserError
from onnxopt.model_io import model_size
from onnxopt.pass_manager import PassContext
from onnxopt.pass_state import ActivationRanges, QuantParams
from onnxopt.verify import compare_arrays, ort_session

log = logging.getLogger(__name__)

MAX_HOLDOUT = 32


def _limit(data: CalibrationData, n: int) -> CalibrationData:
    if data.length is not None and data.length <= n:
        return data
    length = n if data.length is not None else None
    return CalibrationData(lambda: itertools.islice(iter(data), n), data.specs, length=length,
                           reiterable=data.reiterable, origin=f"{data.origin}, first {n}")


def open_calibration(proto: onnx.ModelProto, ctx: PassContext) -> CalibrationData | None:
    """Open the calibration option into ``ctx.calibration``; return the held-back part (or None)."""
    source = ctx.options.get("calibration")
    if source is None:
        return None
    data = require_finite(open_calibration_data(source, input_specs_of(proto)))  # NaN/Inf in a sample: refused
    limit = ctx.options.get("calib_samples")
    if limit is not None:
        if int(limit) < 1:
            raise UserError(f"--calib-samples must be at least 1, got {limit}")
        data = _limit(data, int(limit))
    if data.reiterable:
        for _ in data:  # validates every sample now (names, dtypes, shapes, NaN/Inf), streaming: fails before any work
            pass
    holdout = ctx.options.get("calib_holdout")
    if holdout is None:
        holdout = min(MAX_HOLDOUT, data.length // 5) if data.length is not None and data.length >= 10 else 0
    held = None
    if holdout:
        data, held = data.split(int(holdout))
    ctx.calibration = data
    return held


def _collect(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    sess = ort_session(model, optimize=True)
    names = [o.name for o in sess.get_outputs()]
    known = {i.name for i in sess.get_inputs()}
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for n, v in zip(names, sess.run(names, {k: v for k, v in feed.items() if k in known}), strict=True):
            outs[n].append(np.asarray(v).ravel())
    return {n: np.concatenate(v) if v else np.zeros(0) for n, v in outs.items()}


def fidelity(before: onnx.ModelProto, after: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]
             ) -> list[dict[str, Any]]:
    """Per output: cosine, SNR (dB), max abs error of ``after`` against ``before`` over all ``feeds``."""
    ref, got = _collect(before, feeds), _collect(after, feeds)
    rows = []
    for name, r in ref.items():
        if name not in got or r.dtype.kind != "f":
            continue
        d = compare_arrays(name, r, got[name])
        rows.append({"output": name, "samples": len(feeds), "cosine": round(d.cosine, 6),
                     "snr_db": round(d.snr_db, 2), "max_abs": float(d.max_abs)})
    return rows


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def quantization_report(before: onnx.ModelProto, after: onnx.ModelProto, ctx: PassContext,
                        held: CalibrationData | None) -> dict[str, Any] | None:
    """The ``quantization`` section of the optimize report; None when no quantization step ran."""
    if ctx.plan is None:  # the precision plan (passes/plan_precision.py) says which mode ran and why
        return None
    mode = ctx.plan.mode
    quant = ctx.state(QuantParams)
    params = quant.tensors if quant is not None else {}
    calibrated = ctx.state(ActivationRanges)  # passes/calibrate_activations: ranges and seconds
    report: dict[str, Any] = {
        "mode": mode,
        "calibration": None if ctx.calibration is None else {
            "method": ctx.options.get("calib_method") or "minmax",
            "seconds": round(float(calibrated.seconds if calibrated is not None else 0.0), 3),
            "held_back": 0 if held is None else held.length,
        },
        "note": ctx.plan.note or None,
        "tensors": {name: {k: _plain(v) for k, v in p.items()} for name, p in sorted(params.items())},
        "bytes_before": model_size(before),  # ByteSize() would serialize the model (and fails past 2 GB)
        "bytes_after": model_size(after),
    }
    # the most clipped activations, drawn by the HTML report
    histograms = clipping_report(report["tensors"], calibrated.ranges if calibrated is not None else {})
    if histograms:
        report["histograms"] = histograms
    if mode != "none" and held is not None:
        try:
            report["fidelity"] = fidelity(before, after, list(held))
            for row in report["fidelity"]:
                log.info("quantization fidelity on %d held-back samples: %s cosine %.5f, SNR %.1f dB, max abs %.4g",
                         row["samples"], row["output"], row["cosine"], row["snr_db"], row["max_abs"])
        except Exception as exc:  # the report must not hide the model: say why fidelity is missing
            report["fidelity_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("quantization fidelity not measured: %s", exc)
    return report
