"""silero VAD quantized statically inside its If subgraphs: frame accuracy within 2 points of FP32.

Calibration follows how the model runs: per-chunk feed dicts (64-sample context prepended, the FP32 state at that
point), from utterances that are not those scored. Needs espeak-ng and the fetched silero-vad wheel.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from onnxopt.models import datasets
from onnxopt.pipeline import OptimizeOptions, optimize_model


def qdq_counts(graph: onnx.GraphProto, where: str = "main") -> dict[str, int]:
    """QuantizeLinear + DequantizeLinear nodes per graph, subgraphs named by their If node and attribute."""
    out = {where: sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)}
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out.update(qdq_counts(a.g, f"{where}/{node.name}.{a.name}"))
    return out


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed: no speech to score")
def test_silero_vad_static_int8_inside_if_within_2_points(tmp_path):
    from onnxopt.interp import Interpreter
    from onnxopt.models.fetch import fetch

    path = fetch("silero_vad")
    proto = onnx.load(path)
    calib_frames, _ = datasets.speech_frames(3, seed=100)
    _, feeds = datasets.vad_stream(path, calib_frames)
    feeds = feeds[::4]  # ~160 chunks spread over speech and silence
    np.savez(tmp_path / "verify.npz", **feeds[len(feeds) // 2])
    opts = OptimizeOptions.build(inputs=str(tmp_path / "verify.npz"), calibration=feeds, quantize="static")
    quant, report = optimize_model(proto, opts)
    onnx.checker.check_model(quant, full_check=True)

    counts = qdq_counts(quant.graph)
    inside = {k: v for k, v in counts.items() if k != "main" and v}
    assert inside, f"no Q/DQ inside the If branches: {counts}"
    assert sum(inside.values()) >= 20, inside
    assert report["verify"]["ok"], report["verify"]

    frames, labels = datasets.speech_frames(8, seed=1)  # held out
    p32 = datasets.vad_probabilities(path, frames)
    p8 = datasets.vad_probabilities(quant, frames)  # onnxruntime loads and runs it
    acc32 = float(((p32 > 0.5) == labels).mean())
    acc8 = float(((p8 > 0.5) == labels).mean())
    assert acc32 >= 0.95, acc32
    assert acc8 >= acc32 - 0.02, (acc32, acc8)

    # the interpreter runs the quantized model too, close to onnxruntime's int8 result
    p8_interp = datasets.vad_probabilities(Interpreter(quant), frames[:150])
    np.testing.assert_allclose(p8_interp, p8[:150], atol=0.05)
