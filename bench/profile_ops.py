"""Where onnxruntime spends its time: kernel time per op type, for a model as given and after our canonicalization.

onnxruntime's own profiler (CPU, 1 thread, all graph optimizations on, as a user runs it), ``--runs`` runs after a
warm-up; per op type the mean milliseconds per run and the node count of the optimized graph, and the total.
This is how the hard-swish chains of the Paddle exports showed up (bench/canonicalize_vs_onnxslim.py times the
whole models against onnxslim's output).

    python bench/profile_ops.py layout_cdla [--runs 10] [--top 12]
    python bench/profile_ops.py bert --runs 200
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import sys
import tempfile

import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(__file__))
from canonicalize_vs_onnxslim import feeds_for, load, ours  # noqa: E402


def kernel_ms(model: onnx.ModelProto, feeds: dict, runs: int) -> tuple[float, dict[str, tuple[float, int]]]:
    """(total ms per run, {op type: (ms per run, nodes)}) from onnxruntime's profiler."""
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(d, "profile")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feed = {i.name: feeds[i.name] for i in sess.get_inputs()}
        for _ in range(runs):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    dur: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            dur[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    per_op = {op: (d / runs / 1e3, count[op] // runs) for op, d in dur.items()}
    return sum(dur.values()) / runs / 1e3, per_op


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="zoo or real model name (bench/canonicalize_vs_onnxslim.py's)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    proto = load(args.model)
    feeds = feeds_for(args.model, proto)
    for label, m in (("input", proto), ("canonicalized", ours(copy.deepcopy(proto)))):
        total, per_op = kernel_ms(m, feeds, args.runs)
        print(f"== {args.model} {label}: kernel time {total:.3f} ms per run")
        for op, (ms, n) in sorted(per_op.items(), key=lambda kv: -kv[1][0])[:args.top]:
            print(f"   {op:28s} {ms:8.3f} ms  {n:4d} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
