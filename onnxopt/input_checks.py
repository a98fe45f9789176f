"""Checks of what a user hands onnxopt, made before any work starts; each failure is one ``UserError`` line.

- ``check_args``: every numeric option of every command is in range (``NUMERIC_RANGES``) and every output
  path (``OUTPUT_FILES``, ``OUTPUT_DIRS``) can be written without clobbering an input or another output.
- ``check_tolerances``: parsed ``--tol NAME=...`` values are finite and non-negative.
- ``check_model_versions``: the model's IR version and opsets are ones the installed onnx knows.
- ``nonfinite`` / ``check_finite``: NaN or Inf in calibration samples and ``--inputs`` arrays.
- ``check_feed_sizes``: generated verification inputs stay under ``MAX_INPUT_BYTES`` / ``MAX_FEEDS_BYTES``.

This module sits at the bottom of the import graph (numpy, onnx and ``onnxopt.errors`` only), so that
``model_io``, ``verify``, ``calibration`` and ``cli`` can all use it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from onnxopt.errors import UserError

MAX_INPUT_BYTES = 1 << 30  # one generated verification input may take at most 1 GiB
MAX_FEEDS_BYTES = 2 << 30  # all generated verification inputs together at most 2 GiB

# dest -> (low, low included, high, high included, what the option means); high None = unbounded.
# The opset's upper bound is the installed onnx's newest opset, filled in by ``_ranges``.
NUMERIC_RANGES: dict[str, tuple[float, bool, float | None, bool, str]] = {
    "opset": (1, True, None, True, "an opset the installed onnx supports"),
    "rtol": (0, True, None, True, "a relative tolerance"),
    "atol": (0, True, None, True, "an absolute tolerance"),
    "min_cosine": (-1, True, 1, True, "a cosine similarity"),
    "calib_samples": (1, True, None, True, "a number of calibration samples"),
    "prune": (0, True, 1, False, "the fraction of FLOPs to remove"),
    "sparsity": (0, True, 1, False, "the fraction of weights to zero"),
    "prune_round_to": (1, True, None, True, "the multiple kept channel counts round to"),
    "prune_min_keep": (0, False, 1, True, "the fraction of channels always kept per layer"),
    "int8_min_conv_macs": (0, True, None, True, "a number of MACs per Conv"),
    "seed": (0, True, None, True, "a random seed"),
    "samples": (1, True, None, True, "a number of samples"),
}
OUTPUT_FILES = ("output", "report", "report_html", "calib_out")  # argparse dests of options naming an output file
OUTPUT_DIRS = ("dump_dir",)  # ... an output folder (created when missing)
INPUT_PATHS = {"input": "input model", "model": "model", "model_a": "first model", "model_b": "second model",
               "inputs": "--inputs file", "calib": "--calib data", "golden": "golden file",
               "report_json": "JSON report"}  # dest -> what it is

_KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training", "ai.onnx.preview"}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _interval(low: float, low_in: bool, high: float | None, high_in: bool) -> str:
    return f"{'[' if low_in else '('}{low:g}, {'inf)' if high is None else f'{high:g}' + (']' if high_in else ')')}"


def _ranges() -> dict[str, tuple[float, bool, float | None, bool, str]]:
    ranges = dict(NUMERIC_RANGES)
    low, low_in, _, high_in, what = ranges["opset"]
    ranges["opset"] = (low, low_in, onnx.defs.onnx_opset_version(), high_in, what)
    return ranges


def check_numeric_options(args: argparse.Namespace) -> None:
    """Every numeric option set in ``args`` lies in its range of ``NUMERIC_RANGES`` (and is finite)."""
    for dest, (low, low_in, high, high_in, what) in _ranges().items():
        value = getattr(args, dest, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        ok = math.isfinite(value) and (value >= low if low_in else value > low)
        if ok and high is not None:
            ok = value <= high if high_in else value < high
        if not ok:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            raise UserError(f"{_flag(dest)} {shown}: must be in {_interval(low, low_in, high, high_in)} "
                            f"({what}); give a value in that range")


def check_tolerances(per: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Parsed ``--tol`` entries: rtol, atol and steps finite and >= 0, a scale finite and > 0."""
    for name, spec in per.items():
        for key, value in spec.items():
            positive = key == "scale"
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                bound = "> 0" if positive else ">= 0"
                raise UserError(f"--tol {name}: {key} {value:g} must be a finite number {bound}")
    return {name: dict(spec) for name, spec in per.items()}


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _check_output_file(flag: str, path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {path}: '{folder}' is a file, not a folder; choose another path")
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: the folder '{folder}' does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write into '{folder}' (permission denied); choose another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}: the existing file is read-only; choose another path")


def _check_output_dir(flag: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a folder; give a folder (it is created when missing)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: '{existing}' is a file, not a folder; choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write into '{existing}' (permission denied); choose another folder")


def check_output_paths(args: argparse.Namespace) -> None:
    """Every output option of ``args`` can be written: its folder exists and is writable, it is not a folder
    (a file, for ``--dump-dir``), and it is neither one of the command's inputs nor another output."""
    inputs = [(dest, Path(v)) for dest in INPUT_PATHS if (v := getattr(args, dest, None))]
    seen: list[tuple[str, Path]] = []
    for dest in (*OUTPUT_FILES, *OUTPUT_DIRS):
        value = getattr(args, dest, None)
        if not value:
            continue
        path, flag = Path(value), "-o" if dest == "output" else _flag(dest)
        for other, given in inputs:
            if _same(path, given):
                raise UserError(f"{flag} {path}: is also the {INPUT_PATHS[other]}; writing it would "
                                f"overwrite the input, choose another path")
        for other, taken in seen:
            if _same(path, taken):
                raise UserError(f"{flag} {path}: is also the path of {other}; give each output its own path")
        (_check_output_dir if dest in OUTPUT_DIRS else _check_output_file)(flag, path)
        seen.append((flag, path))


def check_args(args: argparse.Namespace) -> None:
    """All the checks of the parsed command line that need no model: numeric ranges, then output paths."""
    check_numeric_options(args)
    check_output_paths(args)


@functools.lru_cache(maxsize=1)
def _newest_opsets() -> dict[str, int]:
    newest: dict[str, int] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        newest[schema.domain] = max(newest.get(schema.domain, 0), schema.since_version)
    newest[""] = newest["ai.onnx"] = onnx.defs.onnx_opset_version()
    return newest


def check_model_versions(model: onnx.ModelProto, name: str) -> None:
    """Refuse a model whose IR version or standard-domain opset is newer than the installed onnx knows."""
    if model.ir_version > onnx.IR_VERSION:
        raise UserError(f"{name}: IR version {model.ir_version} is newer than the installed onnx {onnx.__version__} "
                        f"supports ({onnx.IR_VERSION}); export the model with an older IR version or upgrade onnx")
    newest = _newest_opsets()
    for imp in model.opset_import:
        if imp.domain in _KNOWN_DOMAINS and imp.domain in newest and imp.version > newest[imp.domain]:
            domain = imp.domain or "ai.onnx"
            raise UserError(f"{name}: opset {domain} {imp.version} is newer than the installed onnx "
                            f"{onnx.__version__} supports ({domain} {newest[imp.domain]}); export the model at "
                            f"opset <= {newest[imp.domain]} or upgrade onnx")


def nonfinite(arr: np.ndarray) -> str | None:
    """How many NaN and Inf a float array holds and where the first is, or None when all is finite (or not float)."""
    dt = arr.dtype
    if not (dt.kind in "fc" or (dt.kind == "V" and dt.type.__module__.startswith("ml_dtypes") and "float" in dt.name)):
        return None
    finite = np.isfinite(arr)
    if finite.all():
        return None
    nan = int(np.isnan(arr).sum())
    first = [int(i) for i in np.unravel_index(int(np.argmin(finite)), arr.shape)]
    return f"{nan} NaN and {int(finite.size - finite.sum()) - nan} Inf value(s), the first at index {first}"


def check_finite(arr: np.ndarray, where: str, advice: str) -> None:
    """``UserError`` "``where`` holds N NaN and M Inf value(s) ...; ``advice``" when ``arr`` is not all finite."""
    found = nonfinite(arr)
    if found:
        raise UserError(f"{where} holds {found}; {advice}")


def _size(nbytes: int) -> str:
    for unit, scale in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} bytes"


class FeedsTooLarge(UserError):
    """Generated inputs would not fit in memory; unlike other feed problems this is not skipped with a warning."""


def check_feed_sizes(shapes: Mapping[str, tuple[np.dtype, list[int]]]) -> None:
    """Refuse to generate inputs (name -> (dtype, concrete shape)) over ``MAX_INPUT_BYTES`` each or
    ``MAX_FEEDS_BYTES`` together, before anything is allocated."""
    sizes = {name: math.prod(shape) * np.dtype(dtype).itemsize for name, (dtype, shape) in shapes.items()}
    for name, nbytes in sizes.items():
        if nbytes > MAX_INPUT_BYTES:
            raise FeedsTooLarge(
                f"input '{name}' of static shape {list(shapes[name][1])} would take {_size(nbytes)} ({nbytes:,} bytes)"
                f" to generate, over the {_size(MAX_INPUT_BYTES)} limit; pass --inputs x.npz or make the dim dynamic")
    total = sum(sizes.values())
    if total > MAX_FEEDS_BYTES:
        raise FeedsTooLarge(
            f"the generated inputs ({', '.join(sizes)}) would take {_size(total)} ({total:,} bytes) together, over "
            f"the {_size(MAX_FEEDS_BYTES)} limit; pass --inputs x.npz or make the dims dynamic")
