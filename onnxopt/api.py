"""``onnxopt.optimize``: the library's entry point, the same code path as ``onnxopt optimize``.

    result = onnxopt.optimize("model.onnx", target="x86-avx2", calibration=reader, budget="top1:0.99",
                              weights="int8", recover="bias")
    result.save("model.int8.onnx")          # the bytes the CLI writes for the same settings
    print(result.plan.summary())

``model``: a path or a ModelProto (never modified). ``calibration``: anything ``--calib`` takes (an .npz path, a
folder of .npz), an onnxruntime ``CalibrationDataReader``, an iterable of feed dicts, a mapping of stacked arrays,
or a ``CalibrationOptions``. A source that can be read only once (a reader, a generator) is first spooled, one
validated sample at a time, into a temporary folder of .npz files, so the run reads it as the CLI reads ``--calib``:
samples held back for fidelity, the planner's sensitivity analysis and the recovery steps all see the same data,
and the same data give the same bytes whichever way they come (memory stays one sample; the folder is removed
after the run). ``budget``: ``--budget`` terms (a str or a list). ``output``: when given, the result is written
there as the CLI writes it (atomically, external data for large models, ``save_plan`` too), and a result outside
the budget raises ``VerificationError`` (its ``report`` says ``"written": false``) unless ``allow_mismatch=True``.
Without ``output`` the result is returned whatever the verdict; ``result.report["verify"]["ok"]`` says it.

The typed options (``QuantizationOptions``, ``PruningOptions``, ``RecoveryOptions``, ``VerificationOptions``,
``CalibrationOptions``) can be given whole, or field by field through ``**options`` with the flat names the CLI uses
(``quantize="static"``, ``weights="int4"``, ``recover="fit"``, ``prune=0.3``, ``min_cosine=0.98``, ...); an unknown
name raises ``TypeError`` naming the accepted ones, a bad value ``UserError`` in one line, before any work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import UserError
from onnxopt.options import (
    OptimizeOptions,
    PruningOptions,
    QuantizationOptions,
    RecoveryOptions,
    VerificationOptions,
)

log = logging.getLogger(__name__)


@dataclass
class OptimizeResult:
    """``model``: the optimized ModelProto; ``report``: the run's report (what ``--report`` writes); ``plan``: the
    precision plan (``onnxopt.plan.Plan``), None when nothing was planned; ``options``: what ran."""

    model: onnx.ModelProto
    report: dict[str, Any]
    plan: Any
    options: OptimizeOptions

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to ``path`` atomically, as the CLI writes it (external data past 2 GB)."""
        from onnxopt.model_io import check_writable, save_model

        check_writable(path)
        save_model(self.model, path)
        return Path(path)


def _read_once(data: Any) -> bool:
    """Whether ``data`` can be read only once: a CalibrationDataReader, an iterator or a generator."""
    if data is None or isinstance(data, (str, os.PathLike, dict, list, tuple)):
        return False
    if hasattr(data, "get_next") and callable(data.get_next):
        return True
    return hasattr(data, "__next__") or getattr(data, "reiterable", True) is False


@contextlib.contextmanager
def _spooled(options: OptimizeOptions, graph: onnx.ModelProto) -> Iterator[OptimizeOptions]:
    """``options`` whose read-once calibration source is replaced by a temporary folder of .npz files, one
    validated sample each (NaN/Inf refused), removed on exit; other options as they are."""
    data = options.calibration.data
    if not _read_once(data):
        yield options
        return
    from onnxopt.calibration import input_specs_of, open_calibration_data
    from onnxopt.calibration.data import require_finite

    stream = require_finite(open_calibration_data(data, input_specs_of(graph)))
    with tempfile.TemporaryDirectory(prefix="onnxopt-calib-") as folder:
        count = 0
        limit = options.calibration.samples  # read no more than the run will use
        for count, feed in enumerate(stream, start=1):
            np.savez(Path(folder) / f"{count - 1:08d}.npz", **feed)
            if limit is not None and count >= limit:
                break
        if count == 0:
            raise UserError(f"calibration data ({stream.origin}) is empty; pass at least one sample")
        log.info("calibration: %d samples from %s spooled to %s", count, stream.origin, folder)
        yield replace(options, calibration=replace(options.calibration, data=folder))


def optimize(model: str | os.PathLike | onnx.ModelProto, *, target: str = "generic", calibration: Any = None,
             budget: str | list[str] | None = None, output: str | os.PathLike | None = None,
             quantization: QuantizationOptions | None = None, pruning: PruningOptions | None = None,
             recovery: RecoveryOptions | None = None, verification: VerificationOptions | None = None,
             **options: Any) -> OptimizeResult:
    """Optimize ``model`` for ``target``; see the module docstring for every argument."""
    from onnxopt.model_io import load_model
    from onnxopt.pipeline import check_output, optimize_model, write_result

    flat: dict[str, Any] = dict(options)
    for name, value in (("quantization", quantization), ("pruning", pruning), ("recovery", recovery),
                        ("verification", verification)):
        if value is not None:
            flat[name] = value
    if calibration is not None:
        flat["calibration"] = calibration
    if budget is not None:
        flat["budget"] = budget
    opts = OptimizeOptions.build(target=target, **flat)  # TypeError / UserError before any work
    if isinstance(model, onnx.ModelProto):
        proto, source = model, None
    elif isinstance(model, (str, os.PathLike)):
        source = Path(model)
        proto = None
    else:
        raise UserError(f"model: expected a path or an onnx.ModelProto, got {type(model).__name__}")
    if output is not None:
        check_output(output, opts, source)
    if proto is None:
        proto = load_model(source)
    with _spooled(opts, proto) as run_opts:
        out, report = optimize_model(proto, run_opts, source=source)
        if output is not None:
            write_result(out, report, output, opts, source)
    plan = None
    if "plan" in report:
        from onnxopt.plan import Plan

        plan = Plan.from_dict(report["plan"])
    return OptimizeResult(out, report, plan, opts)
