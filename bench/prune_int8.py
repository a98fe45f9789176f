"""Pruning with int8 on top, on the ResNet-18-like zoo model: latency vs FP32 and fidelity, in one run.

Goal (issue 5): with 30% of FLOPs pruned and int8 on top, at least 4x faster than FP32 (onnxruntime CPU, batch 1,
one thread) at cosine >= 0.99. Calibration: 16 zoo sample feeds; evaluation: 8 other feeds.

    python bench/prune_int8.py [--prune 0.3] [--rounds 15]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnxruntime as ort

from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pipeline import OptimizeOptions, optimize_model


def session(proto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prune", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    model = build("resnet18")
    calib = [sample_inputs(model, seed=1000 + i) for i in range(16)]
    evals = [sample_inputs(model, seed=5000 + i) for i in range(8)]
    variants = {"fp32": model}
    for name, extra in (("int8", {}), (f"prune{args.prune}+int8", {"prune": args.prune})):
        start = time.perf_counter()
        out, report = optimize_model(model, OptimizeOptions.build(
            target="x86-vnni", verify=False, calibration=calib, quantize="static", **extra))
        variants[name] = out
        flops = report.get("prune", {})
        print(f"{name}: built in {time.perf_counter() - start:.1f} s"
              + (f", FLOPs {flops['flops_before']:.3g} -> {flops['flops_after']:.3g}" if flops else ""))
    sessions = {k: session(v) for k, v in variants.items()}
    feed = evals[0]
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):  # interleaved so machine load hits every variant alike
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t)
    ref = [sessions["fp32"].run(None, f)[0].ravel() for f in evals]
    fp32_ms = np.median(times["fp32"]) * 1e3
    print(f"{'variant':<16} {'ms':>8} {'x FP32':>8} {'cosine':>9} {'top1':>6}")
    goal_met = False
    for k, s in sessions.items():
        outs = [s.run(None, f)[0].ravel() for f in evals]
        cos = min(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(ref, outs, strict=True))
        top1 = np.mean([a.argmax() == b.argmax() for a, b in zip(ref, outs, strict=True)])
        ms = np.median(times[k]) * 1e3
        print(f"{k:<16} {ms:>8.2f} {fp32_ms / ms:>7.2f}x {cos:>9.5f} {top1:>6.2f}")
        if k.startswith("prune"):
            goal_met = fp32_ms / ms >= 4 and cos >= 0.99
    print(f"goal (pruned + int8 at least 4x FP32 at cosine >= 0.99): {'met' if goal_met else 'MISSED'}")
    return 0 if goal_met else 1


if __name__ == "__main__":
    sys.exit(main())
