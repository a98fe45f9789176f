"""optimize(): load -> target pipeline -> verify -> report. The CLI and library users call this."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt import __version__
from onnxopt.errors import PassError, UserError, VerificationError
from onnxopt.inspect_model import node_count, op_histogram
from onnxopt.ir import Model
from onnxopt.model_io import check_writable, load_model, save_model
from onnxopt.pass_manager import PassContext, PassManager
from onnxopt.quant_report import open_calibration, quantization_report
from onnxopt.verify import (
    check_feeds,
    compare_outputs,
    format_diffs,
    load_feeds,
    make_feeds,
    make_pass_verifier,
    run_model,
)

log = logging.getLogger(__name__)


@dataclass
class OptimizeOptions:
    target: str = "generic"
    min_opset: int | None = None
    verify: bool = True
    rtol: float = 1e-3
    atol: float = 1e-4
    min_cosine: float = 0.99
    allow_mismatch: bool = False
    inputs: str | None = None
    debug: bool = False
    debug_engine: str = "onnxruntime"
    progress: bool = False
    dump_dir: str | None = None
    check: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def pass_options(self) -> dict[str, Any]:
        opts = dict(self.extra)
        if self.min_opset is not None:
            opts["min_opset"] = self.min_opset
        return opts


def optimize_model(proto: onnx.ModelProto, options: OptimizeOptions) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Run the target's pipeline on ``proto`` (not modified) and return the new model and a report."""
    from onnxopt.targets import get_target

    target = get_target(options.target)
    ctx = PassContext(target=target.name, options={**target.default_options(), **options.pass_options()},
                      progress=options.progress)
    held = open_calibration(proto, ctx)  # options["calibration"] -> ctx.calibration, held-back samples
    feeds = _feeds_for(proto, options, held, ctx.calibration)
    verifier = None
    if options.debug and feeds is not None:
        verifier = make_pass_verifier(proto, feeds, engine=options.debug_engine, rtol=options.rtol, atol=options.atol)
    manager = PassManager(target.pipeline(ctx.options), check=options.debug, verifier=verifier,
                          dump_dir=options.dump_dir)
    model = Model.from_onnx(proto)
    start = time.perf_counter()
    manager_report = manager.run(model, ctx)
    elapsed = time.perf_counter() - start
    out = model.to_onnx()
    if options.check:
        try:
            onnx.checker.check_model(out, full_check=True)
        except Exception as e:
            raise PassError(f"the optimized model fails onnx.checker: {str(e).splitlines()[0]}") from e
    report: dict[str, Any] = {
        "onnxopt": __version__,
        "target": target.name,
        "seconds": round(elapsed, 3),
        "nodes_before": node_count(proto),
        "nodes_after": node_count(out),
        "ops_before": dict(op_histogram(proto)),
        "ops_after": dict(op_histogram(out)),
        "bytes_before": proto.ByteSize(),
        "bytes_after": out.ByteSize(),
        **manager_report.to_dict(),
        "lossy": manager_report.lossy_changes,
        "declines": _summarize_declines(ctx),
        "lint": [str(v) for v in target.lint(out)],
    }
    quant = quantization_report(proto, out, ctx, held)
    if quant is not None:
        report["quantization"] = quant
    for key, name in (("prune_report", "prune"), ("sparsity_report", "sparsity"), ("speed_check", "speed_check")):
        if key in ctx.cache:
            report[name] = ctx.cache[key]
    if options.verify and feeds is not None:
        report["verify"] = _verify(proto, out, feeds, options, lossy=manager_report.lossy_changes)
    return out, report


def _feeds_for(proto: onnx.ModelProto, options: OptimizeOptions, held, calibration
               ) -> dict[str, np.ndarray] | None:
    """What verification runs on: ``--inputs``, else a real sample (held back from calibration when there is
    one), else generated inputs. Quantized models must be judged on data like the calibration data: on random
    inputs their error says little about their error in use."""
    if options.inputs:
        return check_feeds(proto, load_feeds(options.inputs), f"--inputs {options.inputs}")
    if not (options.verify or options.debug):
        return None
    for data in (held, calibration):
        if data is not None and getattr(data, "reiterable", False):
            return next(iter(data))
    try:
        return make_feeds(proto)
    except UserError as e:
        log.warning("not verifying: %s", e)
        return None


def _verify(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray],
            options: OptimizeOptions, lossy: bool) -> dict[str, Any]:
    """Lossless pipelines must stay within rtol/atol; lossy ones within the cosine budget ``min_cosine``."""
    try:
        ref = run_model(before, feeds, "onnxruntime", optimize=False)
    except Exception as e:  # e.g. generated inputs too small for the model's padding
        reason = f"the input model does not run on these inputs ({str(e).splitlines()[0][:200]})"
        log.warning("not verifying: %s; if the generated inputs are the cause, pass representative ones with "
                    "--inputs x.npz", reason)
        return {"engine": "onnxruntime", "ok": None, "skipped": reason}
    try:
        got = run_model(after, feeds, "onnxruntime", optimize=False)
    except Exception as e:
        raise PassError(f"the optimized model no longer runs where the input model did: {str(e).splitlines()[0]}"
                        ) from e
    diffs = compare_outputs(ref, got, rtol=options.rtol, atol=options.atol)
    if lossy:
        ok = all(d.cosine >= options.min_cosine or (d.ok and d.note == "") for d in diffs)
        budget = f"cosine >= {options.min_cosine}"
    else:
        ok = all(d.ok for d in diffs)
        budget = f"rtol {options.rtol}, atol {options.atol}"
    table = format_diffs(diffs)
    if not ok:
        log.warning("outputs moved beyond the budget (%s):\n%s", budget, table)
    else:
        log.info("verified against the input model (%s):\n%s", budget, table)
    return {"engine": "onnxruntime", "ok": ok, "budget": budget, "outputs": [d.to_dict() for d in diffs]}


def _summarize_declines(ctx: PassContext) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in ctx.declines:
        key = f"{d.pass_name}: {d.reason}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def optimize_file(src: str | Path, dst: str | Path, options: OptimizeOptions) -> dict[str, Any]:
    """Load ``src``, optimize, and write ``dst`` atomically. ``src`` is never written."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise UserError(f"{dst}: the output would overwrite the input; choose another output path")
    check_writable(dst)
    proto = load_model(src)
    out, report = optimize_model(proto, options)
    verdict = report.get("verify")
    if verdict and verdict["ok"] is False and not options.allow_mismatch:
        raise VerificationError(f"the optimized model's outputs moved beyond the budget ({verdict['budget']}); "
                                f"nothing was written (see --report, or pass --allow-mismatch to write it anyway)")
    save_model(out, dst)
    report["input"], report["output"] = str(src), str(dst)
    from onnxopt.targets import get_target

    target = get_target(options.target)
    command = target.build_command(str(dst))
    if command:
        report["build_command"] = command
    report["file_bytes_before"] = src.stat().st_size
    report["file_bytes_after"] = dst.stat().st_size
    return report
