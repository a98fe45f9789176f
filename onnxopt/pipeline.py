"""optimize(): load -> target pipeline -> verify -> report -> save. The CLI and ``onnxopt.optimize`` call this.

``OptimizeOptions`` (``onnxopt.options``, re-exported here) holds the typed options; ``optimize_model`` runs them on a
ModelProto, ``write_result`` refuses a result outside the budget or writes it (model, plan), and ``optimize_file`` is
both from a file. A refused run raises ``VerificationError`` whose ``report`` says ``"written": false``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt import __version__, model_io
from onnxopt import host as host_mod  # looked up per call, so tests can stand in another host
from onnxopt.budget import Budget, output_producers
from onnxopt.errors import PassError, UserError, VerificationError
from onnxopt.input_checks import FeedsTooLarge
from onnxopt.inspect_model import node_count, op_histogram
from onnxopt.ir import Model
from onnxopt.model_io import check_writable, load_model, save_model
from onnxopt.options import OptimizeOptions
from onnxopt.pass_manager import PassContext, PassManager
from onnxopt.pass_state import PruneReport, SparsityReport, WeightsReport
from onnxopt.quant_report import open_calibration, quantization_report
from onnxopt.recovery import RecoveryReport
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


def optimize_model(proto: onnx.ModelProto, options: OptimizeOptions, *, source: str | Path | None = None
                   ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Run the target's pipeline on ``proto`` (not modified) and return the new model and a report. ``source``: the
    file ``proto`` was loaded from; a large input model is verified from it instead of being written out again."""
    from onnxopt.targets import get_target

    target = get_target(options.target)
    ctx = PassContext(target=target.name, options={**target.default_options(), **options.pass_options()},
                      progress=options.progress)
    budget = options.make_budget()
    ctx.options["budget"] = budget  # the planner searches against it; _verify judges the result by it
    held = open_calibration(proto, ctx)  # options["calibration"] -> ctx.calibration, held-back samples
    ctx.holdout = held
    feeds = _feeds_for(proto, options, held, ctx.calibration)
    verifier = None
    if options.debug and feeds is not None:
        verifier = make_pass_verifier(proto, feeds, engine=options.debug_engine, rtol=options.verification.rtol,
                                      atol=options.verification.atol)
    manager = PassManager(target.pipeline(ctx.options), check=options.debug, verifier=verifier,
                          dump_dir=options.dump_dir)
    model = Model.from_onnx(proto)
    start = time.perf_counter()
    manager_report = manager.run(model, ctx)
    elapsed = time.perf_counter() - start
    out = model.to_onnx()
    run_out = model_io.runnable(out)  # a large model reaches onnx.checker and onnxruntime through a file, written once
    if options.check:
        try:
            model_io.check_model(run_out, full_check=True)
        except Exception as e:
            raise PassError(f"the optimized model fails onnx.checker: {str(e).splitlines()[0]}") from e
    report: dict[str, Any] = {
        "onnxopt": __version__,
        "target": target.name,
        **({"target_requested": options.target} if options.target != target.name else {}),
        "host": host_mod.current_host().to_dict(),  # timings and onnxruntime's int8 results depend on it
        "seconds": round(elapsed, 3),
        "nodes_before": node_count(proto),
        "nodes_after": node_count(out),
        "ops_before": dict(op_histogram(proto)),
        "ops_after": dict(op_histogram(out)),
        "bytes_before": model_io.model_size(proto),  # never ByteSize(): it serializes the model, and fails past 2 GB
        "bytes_after": model_io.model_size(out),
        **manager_report.to_dict(),
        "lossy": manager_report.lossy_changes,
        "declines": _summarize_declines(ctx),
        **_declined(ctx),
        "lint": [str(v) for v in target.lint(out)],
    }
    quant = quantization_report(proto, out, ctx, held)
    if quant is not None:
        report["quantization"] = quant
    for kind, name in ((PruneReport, "prune"), (SparsityReport, "sparsity"), (WeightsReport, "weights")):
        section = ctx.state(kind)
        if section is not None:
            report[name] = section.to_dict()
    recovery = ctx.state(RecoveryReport)  # --recover: per layer, the error before and after each step
    if recovery is not None:
        report["recovery"] = recovery.to_dict()
    if ctx.plan is not None:
        report["plan"] = {**ctx.plan.to_dict(), "summary": ctx.plan.summary()}
        if ctx.plan.timing is not None:
            report["speed_check"] = ctx.plan.timing.to_report()
    if options.verification.verify and feeds is not None:
        before = source if source is not None and model_io.is_large(proto) else proto
        report["verify"] = _verify(before, run_out, feeds, options, lossy=manager_report.lossy_changes,
                                   budget=budget, held=held)
    return out, report


def _feeds_for(proto: onnx.ModelProto, options: OptimizeOptions, held, calibration
               ) -> dict[str, np.ndarray] | None:
    """What verification runs on: ``--inputs``, else a real sample (held back from calibration when there is
    one), else generated inputs. Quantized models must be judged on data like the calibration data: on random
    inputs their error says little about their error in use."""
    inputs = options.verification.inputs
    if inputs:
        return check_feeds(proto, load_feeds(inputs), f"--inputs {inputs}")
    if not (options.verification.verify or options.debug):
        return None
    for data in (held, calibration):
        if data is not None and getattr(data, "reiterable", False):
            return next(iter(data))
    try:
        return make_feeds(proto)
    except FeedsTooLarge:
        raise  # the model's own static shapes: exit 2 before any work, not a silent "not verified"
    except UserError as e:
        log.warning("not verifying: %s", e)
        return None


def _verify(before: onnx.ModelProto | os.PathLike, after: onnx.ModelProto | os.PathLike,
            feeds: dict[str, np.ndarray], options: OptimizeOptions, lossy: bool, budget: Budget | None = None,
            held: Any = None) -> dict[str, Any]:
    """Lossless pipelines must stay within rtol/atol; lossy ones within the accuracy budget (``onnxopt.budget``),
    judged on the held-back samples the planner used when there are some (else on ``feeds``) and against the input
    model (so pruning's error counts too). A large model comes as a path (``model_io.runnable``), never as a
    protobuf to serialize."""
    try:
        ref = run_model(before, feeds, "onnxruntime", optimize=False)
    except Exception as e:  # e.g. generated inputs too small for the model's padding
        reason = f"the input model does not run on these inputs ({str(e).splitlines()[0][:200]})"
        log.warning("not verifying: %s; if the generated inputs are the cause, pass representative ones with "
                    "--inputs x.npz", reason)
        return {"engine": "onnxruntime", "host": host_mod.current_host().label(), "ok": None, "skipped": reason}
    engine, why = _verify_engine(options.target, lossy)
    try:
        got = run_model(after, feeds, "onnxruntime", optimize=False)
    except Exception as e:
        raise PassError(f"the optimized model no longer runs where the input model did: {str(e).splitlines()[0]}"
                        ) from e
    host_note: dict[str, Any] = {}
    if engine == "reference":
        try:
            spec = run_model(after, feeds, "reference")
        except UserError as e:  # an op the interpreter has no kernel for: this host's onnxruntime is all there is
            engine, why = "onnxruntime", f"{why}; but the interpreter cannot run it ({e}), so this host's figure stands"
            log.warning("verifying on this host's onnxruntime: %s", why)
        else:
            host_diffs = compare_outputs(ref, got, rtol=options.verification.rtol, atol=options.verification.atol)
            host_note = {"this_host_onnxruntime_min_cosine": round(min((d.cosine for d in host_diffs), default=1.0), 6)}
            log.info("verdict in the spec's int8 arithmetic (reference interpreter): %s", why)
            got = spec
    diffs = compare_outputs(ref, got, rtol=options.verification.rtol, atol=options.verification.atol)
    terms: list[dict[str, Any]] = []
    if lossy:
        result = _judge_budget(before, after, feeds, ref, got, budget or options.make_budget(), held,
                               engine == "reference")
        ok, budget_text = result.ok, _describe(result)
        terms = [{"term": t.label, "value": t.value, "ok": t.ok, "usage": t.usage} for t in result.terms]
    else:
        ok = all(d.ok for d in diffs)
        budget_text = f"rtol {options.verification.rtol}, atol {options.verification.atol}"
    table = format_diffs(diffs)
    if not ok:
        log.warning("outputs moved beyond the budget (%s):\n%s", budget_text, table)
    else:
        log.info("verified against the input model (%s):\n%s", budget_text, table)
    return {"engine": engine, **({"engine_reason": why} if why else {}), **host_note,
            "host": host_mod.current_host().label(), "ok": ok, "budget": budget_text,
            **({"budget_terms": terms} if terms else {}), "outputs": [d.to_dict() for d in diffs]}


def _judge_budget(before: onnx.ModelProto | os.PathLike, after: onnx.ModelProto | os.PathLike,
                  feeds: dict[str, np.ndarray], ref: dict[str, np.ndarray], got: dict[str, np.ndarray],
                  budget: Budget, held: Any, spec_only: bool) -> Any:
    """The budget on the held-back samples (onnxruntime, optimizations off: Q/DQ run unfused, in float, the same on
    every host), or on ``feeds`` alone when the interpreter judges (``spec_only``) or nothing was held back."""
    from onnxopt.verify import ort_session

    refs, gots = [ref], [got]
    if held is not None and not spec_only and getattr(held, "reiterable", False):
        samples = list(held)
        refs = [run_model(before, f, "onnxruntime", optimize=False) for f in samples]
        gots = [run_model(after, f, "onnxruntime", optimize=False) for f in samples]
    graph = before if isinstance(before, onnx.ModelProto) else onnx.load(str(before), load_external_data=False)
    resolved = budget.resolve(refs, output_producers(graph))
    score = baseline = None
    if budget.custom is not None:
        baseline = float(budget.custom.fn(ort_session(before, optimize=False)))
        score = float(budget.custom.fn(ort_session(after, optimize=False)))
    return resolved.evaluate(refs, gots, score, baseline)


def _describe(result: Any) -> str:
    """The budget's terms, the failing ones first (``--budget`` to change them)."""
    terms = sorted(result.terms, key=lambda t: t.ok)
    return ", ".join(f"{t.label} (got {t.value:.6g})" for t in terms) or "no terms"


def _verify_engine(target_name: str, lossy: bool) -> tuple[str, str]:
    """Which engine judges the output, and why: the verdict must not depend on the CPU running onnxopt.

    onnxruntime computes int8 as the spec says on arm64 and on x86 with VNNI; on x86 without VNNI its u8 x s8
    kernels add pairs of products in a saturating int16 (VPMADDUBSW), so there a full-range int8 model would be
    judged by this host's arithmetic, not the target's (measured on an AVX2-only EPYC: cosine 0.51 against 0.999
    in the spec's arithmetic on a small conv net). There the reference interpreter (int32 sums, the spec) judges
    quantized models, unless the target's weights are 7-bit (x86-avx2), which cannot saturate."""
    if not lossy:
        return "onnxruntime", ""
    host = host_mod.current_host()
    if host.int8_is_spec_exact:
        return "onnxruntime", ""
    from onnxopt.targets import get_target

    scheme = get_target(target_name).scheme
    if scheme is not None and scheme.weights.reduce_range:
        return "onnxruntime", ""
    return "reference", (f"this host ({host.label()}) runs onnxruntime's u8 x s8 int8 with saturating int16 pair "
                         "sums; the target's int8 is judged in the spec's int32 arithmetic")


def _summarize_declines(ctx: PassContext) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in ctx.declines:
        key = f"{d.pass_name}: {d.reason}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


MAX_DECLINED = 2000  # per-node declines kept in the report (the log has them all)


def _declined(ctx: PassContext) -> dict[str, Any]:
    """``declined``: each distinct (pass, node, reason) other than whole-model ones, so a reader of the report
    finds a node by name and sees why it was left alone; ``declined_truncated`` counts what was left out."""
    seen: dict[tuple[str, str, str], None] = {}
    for d in ctx.declines:
        if d.where != "model":
            seen.setdefault((d.pass_name, d.where, d.reason), None)
    rows = [{"pass": p, "where": w, "reason": r} for p, w, r in seen]
    out: dict[str, Any] = {"declined": rows[:MAX_DECLINED]}
    if len(rows) > MAX_DECLINED:
        out["declined_truncated"] = len(rows) - MAX_DECLINED
    return out


def check_output(dst: str | Path, options: OptimizeOptions, src: str | Path | None = None) -> None:
    """Before any work: ``dst`` (and ``--save-plan``) can be written and ``dst`` is not the input file."""
    dst = Path(dst)
    if src is not None and dst.exists() and Path(src).exists() and dst.resolve() == Path(src).resolve():
        raise UserError(f"{dst}: the output would overwrite the input; choose another output path")
    check_writable(dst)
    if options.quantization.save_plan:
        check_writable(options.quantization.save_plan)


def write_result(out: onnx.ModelProto, report: dict[str, Any], dst: str | Path, options: OptimizeOptions,
                 src: str | Path | None = None) -> dict[str, Any]:
    """Write ``out`` to ``dst`` atomically (external data for large models) and the plan to ``--save-plan``; or,
    when the outputs moved beyond the budget and mismatches are not allowed, write nothing and raise
    ``VerificationError`` carrying ``report`` (``"written": false``, ``"refused"``: why). ``report`` gains the paths,
    the build command and the file sizes."""
    dst = Path(dst)
    if src is not None:
        report["input"] = str(src)
        report["file_bytes_before"] = model_io.file_bytes(src)  # with its external data files
    report["output"] = str(dst)
    verdict = report.get("verify")
    if verdict and verdict["ok"] is False and not options.verification.allow_mismatch:
        message = f"the optimized model's outputs moved beyond the budget ({verdict['budget']}); nothing was written"
        report["written"], report["refused"] = False, message
        raise VerificationError(message, report=report)
    save_model(out, dst)
    report["written"] = True
    save_plan = options.quantization.save_plan
    if save_plan:
        if "plan" not in report:
            log.warning("--save-plan %s: no plan was made (nothing was quantized), so none was written", save_plan)
        else:
            from onnxopt.plan import Plan

            Plan.from_dict(report["plan"]).save(save_plan)
            report["plan_file"] = str(save_plan)
    from onnxopt.targets import get_target

    command = get_target(options.target).build_command(str(dst))
    if command:
        report["build_command"] = command
    report["file_bytes_after"] = model_io.file_bytes(dst)
    return report


def optimize_file(src: str | Path, dst: str | Path, options: OptimizeOptions) -> dict[str, Any]:
    """Load ``src``, optimize, and write ``dst`` atomically (``write_result``). ``src`` is never written."""
    check_output(dst, options, src)
    proto = load_model(src)
    out, report = optimize_model(proto, options, source=src)
    return write_result(out, report, dst, options, src)
