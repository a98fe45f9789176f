"""speech_frames + vad_stream: silero VAD run the way its wrapper runs it is accurate on espeak-ng speech.

Needs espeak-ng (skipped without it, with the reason); tests marked `realmodel` fetch silero-vad once.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from onnxopt.errors import UserError
from onnxopt.models import datasets

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed: speech_frames synthesizes speech with it")


@pytest.fixture(scope="module")
def speech():
    return datasets.speech_frames(8, seed=1)


def test_frames_and_labels_are_deterministic_and_balanced(speech):
    frames, labels = speech
    again_frames, again_labels = datasets.speech_frames(8, seed=1)
    np.testing.assert_array_equal(frames, again_frames)
    np.testing.assert_array_equal(labels, again_labels)
    assert frames.dtype == np.float32 and frames.shape == (labels.size, 512) and labels.dtype == np.int64
    assert 0.4 < labels.mean() < 0.85  # both classes well represented
    energy = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    assert np.median(energy[labels == 1]) > 10 * np.median(energy[labels == 0])  # labels follow the speech
    assert not np.array_equal(datasets.speech_frames(2, seed=2)[0][:50], frames[:50])


def test_labels_bridge_short_pauses_only():
    frame, sr = 512, 16000
    clean = np.zeros(frame * 40, np.float32)
    for a, b in ((2, 8), (10, 14), (30, 34)):  # a 2-frame pause (64 ms) and a 16-frame one (0.5 s)
        clean[a * frame:b * frame] = 0.3
    labels = datasets._speech_labels(clean, frame, sr)
    assert labels[2:14].all() and not labels[14:30].any() and labels[30:34].all() and not labels[:2].any()


@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["silero_vad", "silero_vad_16k_op15", "silero_vad_op18_ifless"])
def test_fp32_frame_accuracy_is_high(speech, name):
    from onnxopt.models.fetch import fetch

    frames, labels = speech
    probs = datasets.vad_probabilities(fetch(name), frames)
    acc = float(((probs > 0.5) == labels).mean())
    assert acc >= 0.95, f"{name}: FP32 frame accuracy {acc:.3f}"


@pytest.mark.realmodel
def test_context_and_state_are_what_make_it_work(speech):
    """The wrapper's protocol matters: 512-sample chunks without the 64-sample context and with the state reset
    each chunk (how speech_frames was first used) score far lower."""
    import onnxruntime as ort

    from onnxopt.models.fetch import fetch

    frames, labels = speech
    sess = ort.InferenceSession(fetch("silero_vad"), providers=["CPUExecutionProvider"])
    zero = np.zeros((2, 1, 128), np.float32)
    naive = np.array([sess.run(["output"], {"input": f[None], "state": zero, "sr": np.array(16000)})[0].item()
                      for f in frames[:400]])
    probs = datasets.vad_probabilities(sess, frames[:400])
    good = ((probs > 0.5) == labels[:400]).mean()
    bad = ((naive > 0.5) == labels[:400]).mean()
    assert good > bad + 0.1, (good, bad)


@pytest.mark.realmodel
def test_stream_feeds_carry_state_and_context(speech):
    from onnxopt.interp import Interpreter
    from onnxopt.models.fetch import fetch

    frames, _ = speech
    path = fetch("silero_vad")
    probs, feeds = datasets.vad_stream(path, frames[:60])
    assert len(feeds) == 60 and all(f["input"].shape == (1, 576) for f in feeds)
    assert not feeds[0]["input"][0, :64].any() and not feeds[0]["state"].any()
    np.testing.assert_array_equal(feeds[5]["input"][0, :64], frames[4, -64:])
    np.testing.assert_array_equal(feeds[5]["input"][0, 64:], frames[5])
    assert np.abs(feeds[59]["state"]).max() > 0.01
    interp_probs = datasets.vad_probabilities(Interpreter(path), frames[:60])  # the interpreter runs it too
    np.testing.assert_allclose(interp_probs, probs, atol=1e-4)


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="8000 or 16000"):
        datasets.vad_stream("unused.onnx", np.zeros(1024, np.float32), sample_rate=44100)
    with pytest.raises(UserError, match="at least 512"):
        datasets.vad_stream("unused.onnx", np.zeros(100, np.float32))
