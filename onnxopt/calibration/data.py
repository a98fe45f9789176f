"""Calibration data: one interface over the four ways a user can hand us samples.

``open_calibration_data(source, input_specs)`` accepts

- an onnxruntime ``CalibrationDataReader`` (anything with ``get_next()`` returning a feed dict or ``None``);
  it is consumed once: iterating the result a second time raises ``UserError``;
- any iterable of feed dicts (a list or other re-iterable collection can be iterated again; a generator or
  iterator is consumed once, like a reader);
- a path to a ``.npz`` whose arrays are keyed by input name with the sample axis prepended (a mapping of
  such arrays, e.g. an already loaded ``NpzFile``, is accepted the same way);
- a path to a directory of ``.npz`` files, one feed each (no sample axis), taken in sorted file-name order.

Every sample is validated lazily, as it streams, against ``input_specs`` (``input_specs_of(model)``):
a missing or unknown input name, a wrong dtype, a wrong rank or a wrong static dimension raises
``UserError`` naming the input, the sample index, what was expected and what was given.
``require_finite(data)`` also refuses NaN/Inf in float arrays (the pipeline asks for it; the collectors
themselves skip and count non-finite values, which suits those a model computes).

Dtype policy: a value whose dtype differs from the input's is cast only when the cast keeps the kind
and the values (float64/float16 -> float32 and the like; an integer array whose values fit the target
integer type); the cast is logged once per input as a warning. Anything else (float -> int, int -> float,
bool, an integer overflow) is an error. Nothing is ever fabricated: no random or padded samples.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import UserError
from onnxopt.input_checks import check_finite

log = logging.getLogger(__name__)

Dim = int | str | None
InputSpec = tuple[np.dtype, tuple[Dim, ...] | None]
Feed = dict[str, np.ndarray]

__all__ = ["CalibrationData", "InputSpec", "input_specs_of", "open_calibration_data", "require_finite"]


def input_specs_of(model: onnx.ModelProto) -> dict[str, InputSpec]:
    """Graph inputs that need feeding (initializers excluded): name -> (numpy dtype, shape or None).

    A dimension is its int value when static, its symbolic name (str) or None when dynamic; the shape is
    None when the model does not state it (rank unknown).
    """
    inits = {init.name for init in model.graph.initializer}
    specs: dict[str, InputSpec] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            raise UserError(f"model input {vi.name!r} is not a tensor; calibration feeds tensors only")
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape: tuple[Dim, ...] | None = None
        if tt.HasField("shape"):
            dims: list[Dim] = []
            for d in tt.shape.dim:
                if d.HasField("dim_value") and d.dim_value > 0:  # Paddle writes -1 for a dynamic dim
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param"):
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            shape = tuple(dims)
        specs[vi.name] = (dtype, shape)
    return specs


def _fmt(dtype: np.dtype, shape: tuple[Dim, ...] | None) -> str:
    if shape is None:
        return f"{np.dtype(dtype).name}[?]"
    return f"{np.dtype(dtype).name}[{','.join('?' if d is None else str(d) for d in shape)}]"


class _Validator:
    """Checks one sample against the specs; remembers which casts it already warned about."""

    def __init__(self, specs: Mapping[str, InputSpec], origin: str):
        self.specs = {k: (np.dtype(v[0]), None if v[1] is None else tuple(v[1])) for k, v in specs.items()}
        self.origin = origin
        self._warned: set[str] = set()

    def __call__(self, index: int, sample: Any) -> Feed:
        where = f"calibration sample {index} ({self.origin})"
        if not isinstance(sample, Mapping):
            raise UserError(f"{where}: expected a dict of input name -> array, got {type(sample).__name__}")
        missing = sorted(set(self.specs) - set(sample))
        if missing:
            dt, sh = self.specs[missing[0]]
            raise UserError(
                f"{where}: input {missing[0]!r} is missing (expected {_fmt(dt, sh)}); "
                f"the sample has {sorted(sample)}"
            )
        unknown = sorted(set(sample) - set(self.specs))
        if unknown:
            raise UserError(
                f"{where}: unknown input {unknown[0]!r}; the model's inputs are {sorted(self.specs)}"
            )
        return {name: self._check(where, name, sample[name]) for name in self.specs}

    def _check(self, where: str, name: str, value: Any) -> np.ndarray:
        dtype, shape = self.specs[name]
        arr = np.asarray(value)
        if arr.dtype != dtype:
            arr = self._cast(where, name, arr, dtype, shape)
        if shape is not None:
            if arr.ndim != len(shape):
                raise UserError(
                    f"{where}: input {name!r} has rank {arr.ndim} (shape {list(arr.shape)}), "
                    f"expected rank {len(shape)} ({_fmt(dtype, shape)})"
                )
            for axis, (want, got) in enumerate(zip(shape, arr.shape, strict=True)):
                if isinstance(want, int) and want != got:
                    raise UserError(
                        f"{where}: input {name!r} has shape {list(arr.shape)}, expected {_fmt(dtype, shape)} "
                        f"(dimension {axis} must be {want})"
                    )
        return arr

    def _cast(self, where: str, name: str, arr: np.ndarray, dtype: np.dtype, shape) -> np.ndarray:
        given = arr.dtype
        ok = False
        if given.kind == "f" and dtype.kind == "f":
            ok = True
        elif given.kind in "iu" and dtype.kind in "iu":
            info = np.iinfo(dtype)
            ok = arr.size == 0 or (int(arr.min()) >= info.min and int(arr.max()) <= info.max)
        if not ok:
            raise UserError(
                f"{where}: input {name!r} has dtype {given.name}, expected {_fmt(dtype, shape)}; "
                f"convert it to {dtype.name}"
            )
        if name not in self._warned:
            self._warned.add(name)
            log.warning("calibration input %r: casting %s to %s (from %s)", name, given.name, dtype.name, where)
        with np.errstate(over="ignore"):  # a value that overflows becomes Inf, refused by the finiteness check
            return arr.astype(dtype)


class CalibrationData:
    """A validated stream of feed dicts.

    Iterating yields one ``{input name: ndarray}`` per sample. Sources that can be read again (a list, an
    ``.npz``, a directory) can be iterated any number of times; a reader or a generator only once.
    ``len()`` works when the size is known (``length`` is then an int, else ``None``; ``len()`` raises
    ``TypeError`` otherwise).
    """

    def __init__(
        self,
        factory: Callable[[], Iterator[Any]],
        specs: Mapping[str, InputSpec],
        *,
        length: int | None,
        reiterable: bool,
        origin: str,
        start: int = 0,
    ):
        self._factory = factory
        self.specs = dict(specs)
        self.length = length
        self.reiterable = reiterable
        self.origin = origin
        self._start = start  # index of the first sample, for error messages after split()
        self._consumed = False
        self._validate = _Validator(self.specs, origin)
        if length == 0:
            raise UserError(f"calibration data ({origin}) is empty; pass at least one sample")

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"the number of calibration samples in {self.origin} is not known before reading")
        return self.length

    def __iter__(self) -> Iterator[Feed]:
        if not self.reiterable:
            if self._consumed:
                raise UserError(
                    f"calibration data ({self.origin}) can be read only once and was already consumed; "
                    "pass a list, an .npz or a directory of .npz to read it again"
                )
            self._consumed = True
        return self._generate()

    def _generate(self) -> Iterator[Feed]:
        n = 0
        for n, sample in enumerate(self._factory(), start=1):  # noqa: B007
            yield self._validate(self._start + n - 1, sample)
        if n == 0:
            raise UserError(f"calibration data ({self.origin}) is empty; pass at least one sample")

    def split(self, holdout: int) -> tuple[CalibrationData, CalibrationData]:
        """(calibration part, held-back part): the first ``holdout`` samples are held back.

        For a read-once source the held-back samples are read now and kept in memory (``holdout`` of them);
        the calibration part then streams the rest, once.
        """
        if holdout < 1:
            raise UserError(f"holdout must be at least 1 sample, got {holdout}")
        if self.length is not None and holdout >= self.length:
            raise UserError(
                f"cannot hold back {holdout} of {self.length} calibration samples: none would be left to calibrate"
            )
        if self.reiterable:
            held = CalibrationData(
                lambda: itertools.islice(self._factory(), holdout),
                self.specs,
                length=holdout,
                reiterable=True,
                origin=f"{self.origin}, held-back part",
                start=self._start,
            )
            rest = CalibrationData(
                lambda: itertools.islice(self._factory(), holdout, None),
                self.specs,
                length=None if self.length is None else self.length - holdout,
                reiterable=True,
                origin=f"{self.origin}, calibration part",
                start=self._start + holdout,
            )
            return rest, held
        it = iter(self)
        kept = list(itertools.islice(it, holdout))
        if len(kept) < holdout:
            raise UserError(
                f"cannot hold back {holdout} calibration samples: {self.origin} has only {len(kept)}"
            )
        held = CalibrationData(
            lambda: iter(kept), self.specs, length=holdout, reiterable=True,
            origin=f"{self.origin}, held-back part", start=self._start,
        )
        rest = CalibrationData(
            lambda: it, self.specs,
            length=None if self.length is None else self.length - holdout, reiterable=False,
            origin=f"{self.origin}, calibration part", start=self._start + holdout,
        )
        # the validated samples are validated again cheaply; they are already arrays of the right type
        return rest, held


def _reader_iter(reader: Any) -> Iterator[Any]:
    while True:
        sample = reader.get_next()
        if sample is None:
            return
        yield sample


def _sized(obj: Any) -> int | None:
    try:
        return int(len(obj))
    except Exception:  # readers commonly raise NotImplementedError from __len__
        return None


def _sample_count(shapes: Mapping[str, tuple[int, ...]], origin: str) -> int:
    """The common length of the sample axis (the first) of arrays keyed by input name."""
    if not shapes:
        raise UserError(f"calibration data ({origin}) holds no arrays; save one array per input name")
    for name, shape in shapes.items():
        if len(shape) == 0:
            raise UserError(
                f"calibration data ({origin}): array {name!r} is a scalar; the first axis must index samples"
            )
    counts = {name: shape[0] for name, shape in shapes.items()}
    if len(set(counts.values())) > 1:
        raise UserError(
            f"calibration data ({origin}): arrays disagree on the number of samples (first axis): {counts}"
        )
    return next(iter(counts.values()))


def open_calibration_data(source: Any, input_specs: Mapping[str, InputSpec]) -> CalibrationData:
    """Wrap ``source`` (reader, iterable of feeds, .npz path or mapping, directory of .npz) as CalibrationData."""
    if isinstance(source, CalibrationData):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix == ".npz" and p.is_file())
            if not files:
                raise UserError(f"calibration directory {path} holds no .npz files; save one feed per .npz")

            def dir_factory() -> Iterator[Feed]:
                for f in files:
                    with np.load(f, allow_pickle=False) as z:
                        yield {k: z[k] for k in z.files}

            return CalibrationData(dir_factory, input_specs, length=len(files), reiterable=True, origin=str(path))
        if not path.exists():
            raise UserError(f"calibration data {path} does not exist; pass an .npz file or a directory of them")
        if path.suffix != ".npz":
            raise UserError(f"calibration data {path} is not an .npz file or a directory of .npz files")
        try:
            with np.load(path, allow_pickle=False) as z:
                shapes = {k: z[k].shape for k in z.files}
        except Exception as exc:
            raise UserError(f"cannot read calibration data {path}: {exc}") from exc
        n = _sample_count(shapes, str(path))

        def npz_factory() -> Iterator[Feed]:
            with np.load(path, allow_pickle=False) as z:
                loaded = {k: z[k] for k in z.files}
            for i in range(n):
                yield {k: v[i] for k, v in loaded.items()}

        return CalibrationData(npz_factory, input_specs, length=n, reiterable=True, origin=str(path))
    if hasattr(source, "get_next") and callable(source.get_next):
        return CalibrationData(
            lambda: _reader_iter(source), input_specs, length=_sized(source), reiterable=False,
            origin=f"{type(source).__name__} reader",
        )
    if isinstance(source, Mapping):
        origin = "mapping of stacked arrays"
        n = _sample_count({k: np.shape(v) for k, v in source.items()}, origin)

        def map_factory() -> Iterator[Feed]:
            loaded = {k: np.asarray(v) for k, v in source.items()}  # an NpzFile decompresses on access
            for i in range(n):
                yield {k: v[i] for k, v in loaded.items()}

        return CalibrationData(map_factory, input_specs, length=n, reiterable=True, origin=origin)
    if isinstance(source, Iterable):
        if iter(source) is source:  # an iterator or generator: read once
            return CalibrationData(
                lambda: source, input_specs, length=None, reiterable=False, origin=type(source).__name__
            )
        return CalibrationData(
            lambda: iter(source), input_specs, length=_sized(source), reiterable=True,
            origin=f"{type(source).__name__} of feeds",
        )
    raise UserError(
        f"cannot use a {type(source).__name__} as calibration data; pass a CalibrationDataReader, "
        "an iterable of feed dicts, an .npz path or a directory of .npz files"
    )


def require_finite(data: CalibrationData) -> CalibrationData:
    """``data`` whose float arrays may hold no NaN or Inf: a sample that does raises ``UserError`` naming the
    sample and the input. Non-finite values in the samples are a data problem (ranges, histograms and the
    fidelity check would all be computed on them), unlike those a model computes, which the collectors skip."""

    def factory() -> Iterator[Feed]:
        for index, feed in enumerate(data, start=data._start):
            for name, arr in feed.items():
                check_finite(arr, f"calibration sample {index} ({data.origin}): input {name!r} ({arr.dtype.name})",
                             "ranges calibrated on NaN/Inf are meaningless: fix or drop this sample")
            yield feed

    return CalibrationData(factory, data.specs, length=data.length, reiterable=data.reiterable, origin=data.origin,
                           start=data._start)
