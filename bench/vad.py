"""silero VAD: FP32 vs our static int8 (Q/DQ inside the If branches), frame accuracy and latency per chunk.

    python bench/vad.py [--models silero_vad,silero_vad_16k_op15,silero_vad_op18_ifless] [--calib 3] [--test 12]

Data: espeak-ng speech between silences (`onnxopt.models.datasets.speech_frames`), run as silero's wrapper runs
it (64-sample context, state carried; `vad_stream`). Calibration: per-chunk feeds of `--calib` utterances (seed
100, every 4th chunk), scoring on `--test` other utterances (seed 1). Latency: onnxruntime CPU, default graph
optimizations, intra/inter_op_num_threads=1, median ms per 512-sample chunk over the whole held-out stream
(state carried), the FP32 and int8 streams alternating so the ratio holds up on a loaded machine.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

MODELS = ("silero_vad", "silero_vad_16k_op15", "silero_vad_op18_ifless")


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _qdq_inside(graph: onnx.GraphProto, top: bool = True) -> int:
    n = 0 if top else sum(x.op_type in ("QuantizeLinear", "DequantizeLinear") for x in graph.node)
    return n + sum(_qdq_inside(a.g, False) for x in graph.node for a in x.attribute
                   if a.type == onnx.AttributeProto.GRAPH)


def _chunk_ms(sess, feeds: list[dict]) -> float:
    names = [o.name for o in sess.get_outputs()]
    times = []
    state = feeds[0]["state"]
    for f in feeds:
        t0 = time.perf_counter()
        _, state = sess.run(names, {**f, "state": state})
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def bench(name: str, n_calib: int, n_test: int, rounds: int = 3) -> dict:
    from onnxopt.models import datasets
    from onnxopt.models.fetch import fetch
    from onnxopt.pipeline import OptimizeOptions, optimize_model

    path = fetch(name)
    proto = onnx.load(path)
    calib_frames, _ = datasets.speech_frames(n_calib, seed=100)
    _, feeds = datasets.vad_stream(path, calib_frames)
    feeds = feeds[::4]
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "v.npz", **feeds[len(feeds) // 2])
        t0 = time.perf_counter()
        quant, _ = optimize_model(proto, OptimizeOptions.build(inputs=str(Path(tmp) / "v.npz"),
                                                               calibration=feeds, quantize="static"))
        t_opt = time.perf_counter() - t0
    frames, labels = datasets.speech_frames(n_test, seed=1)
    s32, s8 = _session(proto), _session(quant)
    p32, test_feeds = datasets.vad_stream(s32, frames)
    p8 = datasets.vad_probabilities(s8, frames)
    ms32, ms8 = [], []
    for _ in range(rounds):
        ms32.append(_chunk_ms(s32, test_feeds))
        ms8.append(_chunk_ms(s8, test_feeds))
    return {"model": name, "frames": int(labels.size), "acc_fp32": float(((p32 > 0.5) == labels).mean()),
            "acc_int8": float(((p8 > 0.5) == labels).mean()), "qdq_in_subgraphs": _qdq_inside(quant.graph),
            "qdq_total": _qdq_inside(quant.graph) + sum(x.op_type in ("QuantizeLinear", "DequantizeLinear")
                                                        for x in quant.graph.node),
            "ms_fp32": float(np.median(ms32)), "ms_int8": float(np.median(ms8)), "optimize_s": t_opt,
            "max_prob_diff": float(np.abs(p32 - p8).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--calib", type=int, default=3, help="calibration utterances")
    ap.add_argument("--test", type=int, default=12, help="held-out utterances")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"{'model':24s} {'frames':>6s} {'acc fp32':>8s} {'acc int8':>8s} {'delta pts':>9s} "
          f"{'QDQ in If':>9s} {'QDQ all':>7s} {'ms fp32':>8s} {'ms int8':>8s} {'int8/fp32':>9s} {'max |dp|':>8s}")
    for name in args.models.split(","):
        r = bench(name, args.calib, args.test)
        print(f"{r['model']:24s} {r['frames']:6d} {r['acc_fp32']:8.4f} {r['acc_int8']:8.4f} "
              f"{100 * (r['acc_int8'] - r['acc_fp32']):+9.2f} {r['qdq_in_subgraphs']:9d} {r['qdq_total']:7d} "
              f"{r['ms_fp32']:8.3f} {r['ms_int8']:8.3f} {r['ms_int8'] / r['ms_fp32']:9.2f} {r['max_prob_diff']:8.3f}")


if __name__ == "__main__":
    main()
