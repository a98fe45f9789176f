"""SmoothQuant's channel smoothing before dynamic int8 (``--recover smooth``), against onnxruntime's quantize_dynamic,
measured in one run.

For each transformer: FP32, onnxruntime ``quantize_dynamic`` (S8 weights, per channel), ours dynamic without recovery
(``--quantize dynamic --recover none``) and ours dynamic with ``--recover smooth``; every MatMul quantized (budget
``cosine:0``: no back-off to float), so the rows differ only by the smoothing. Columns: task metric (MiniLM: nearest-
neighbour agreement with FP32 among the test sentences, %; the zoo BERT has random weights: top-1 agreement of its
outputs), mean and worst cosine of all outputs against FP32 on the test inputs, latency (onnxruntime CPU, 1 thread,
interleaved, best round's median: quantize_vs_ort.latencies_ms) and its ratio to FP32, and the activations smoothed.

    python bench/smooth.py [--models minilm bert] [--calib 24] [--test 48]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(__file__))
from plan_models import CASES, Case, outputs  # noqa: E402
from quantize_vs_ort import latencies_ms  # noqa: E402

from onnxopt.budget import cosine  # noqa: E402


def zoo_bert(n_calib: int, n_test: int) -> Case:
    from onnxopt.models.zoo import build, sample_inputs

    model = build("bert")

    def score(m: onnx.ModelProto, fp32: onnx.ModelProto) -> float:
        a, b = outputs(m, test), outputs(fp32, test)
        return 100.0 * float(np.mean([np.mean(x[0].argmax(-1) == y[0].argmax(-1)) for x, y in zip(a, b, strict=True)]))

    test = [sample_inputs(model, seed=1000 + i) for i in range(n_test)]
    return Case("bert", model, [sample_inputs(model, seed=i) for i in range(n_calib)], test, "top-1 agreement %",
                score)


MODELS = {"minilm": lambda c, t: CASES["minilm"](c, t), "bert": zoo_bert}


def ort_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "m.onnx"), os.path.join(d, "q.onnx")
        onnx.save(model, src)
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
        return onnx.load(dst)


def ours(model: onnx.ModelProto, calib: list[dict], recover: str | None) -> tuple[onnx.ModelProto, dict]:
    from onnxopt.pipeline import OptimizeOptions, optimize_model

    extra = {"recover": recover} if recover else {}
    return optimize_model(model, OptimizeOptions.build(target="host", quantize="dynamic", calibration=calib,
                                                       budget=["cosine:0"], allow_mismatch=True, **extra))


def cosines(model: onnx.ModelProto, fp32: onnx.ModelProto, feeds: list[dict]) -> tuple[float, float]:
    vals = []
    for a, b in zip(outputs(model, feeds), outputs(fp32, feeds), strict=True):
        for x, y in zip(a, b, strict=True):
            vals.append(cosine(y, x))
    return float(np.mean(vals)), float(np.min(vals))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--calib", type=int, default=24)
    ap.add_argument("--test", type=int, default=48)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print("| model | variant | metric | cos mean | cos min | ms | speedup vs FP32 | smoothed |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        case = MODELS[name](args.calib, args.test)
        variants = {"fp32": case.model, "ort-dynamic": ort_dynamic(case.model)}
        smoothed = {"fp32": "", "ort-dynamic": ""}
        for k, recover in (("ours-dynamic", "none"), ("ours-dynamic+smooth", "smooth")):
            variants[k], report = ours(case.model, case.calib, recover)
            step = [s for s in report.get("recovery", {}).get("steps", []) if s.get("step") == "smooth"]
            smoothed[k] = f"{step[0].get('layers', 0)} activations" if step else "none"
        with tempfile.TemporaryDirectory() as d:
            paths = {}
            for k, m in variants.items():
                paths[k] = os.path.join(d, f"{k}.onnx")
                onnx.save(m, paths[k])
            ms = latencies_ms(paths, case.test[0], runs=600, rounds=10)
        for k, m in variants.items():
            cm, cmin = cosines(m, case.model, case.test)
            print(f"| {name} | {k} | {case.score(m, case.model):.1f} | {cm:.5f} | {cmin:.5f} | {ms[k]:.2f} | "
                  f"{ms['fp32'] / ms[k]:.2f}x | {smoothed[k]} |")
        print(f"({name}: metric = {case.metric})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
