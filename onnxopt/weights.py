"""The weights of large models, read from their file on demand and never held twice.

A large model (``model_io.EXTERNAL_THRESHOLD``) is loaded with its weights left in their file
(``tensor_files.external_source``). Here:

- ``attach``: after onnx-graphsurgeon's import, such a constant's values are ``FileValues``; a pass that reads them
  gets a read-only memory map of the file (a ``FileArray``: only the pages touched are read, and writing into it
  fails instead of being lost);
- ``release``: a constant whose values are still the untouched map goes back to ``FileValues``, so the map (and the
  pages it holds in the process's memory) is let go; the pass manager does this after every pass;
- ``spill``: on export, large values a pass computed (int8 weights, folded constants) are written to a temporary
  file and the constant reads them from there, so the exported protobuf carries no weight bytes either.

Exported protobufs then name every large tensor's file by absolute path; ``model_io.write_model`` copies the
bytes file to file when such a model is saved, checked or run.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxopt import model_io, tensor_files

log = logging.getLogger(__name__)

SPILL_MIN = 1 << 20  # bytes: computed values from this size leave memory on export (large models only)


class FileArray(np.ndarray):
    """A read-only map of a tensor's bytes in its file; ``source`` is its TensorProto (None for derived arrays)."""

    source: onnx.TensorProto | None = None

    def __array_finalize__(self, obj: object) -> None:
        self.source = None  # a slice or reshape is not the tensor: never put back in its place


class FileValues(LazyValues):
    """Lazy values of a tensor kept in its file (``tensor_files.external_source``): loaded as a read-only memory map."""

    def load(self) -> np.ndarray:
        arr = tensor_files.tensor_array(self.tensor)
        if not isinstance(arr, np.memmap):
            return np.array(arr)  # a type whose bytes numpy cannot map (4-bit, strings): read in
        arr = arr.view(FileArray)
        arr.source = self.tensor
        return arr


def _constants(graph: gs.Graph):
    from onnxopt.ir import iter_graphs

    seen: set[int] = set()
    for g in iter_graphs(graph):
        found = [t for t in g.tensors().values() if isinstance(t, gs.Constant)]
        found += [v for n in g.nodes for v in n.attrs.values() if isinstance(v, gs.Constant)]
        for t in found:
            if id(t) not in seen:
                seen.add(id(t))
                yield t


def attach(graph: gs.Graph) -> int:
    """Make the constants whose data is in a file (after gs.import_onnx) load it as a memory map; how many."""
    count = 0
    for t in _constants(graph):
        if type(t._values) is LazyValues and tensor_files.external_source(t._values.tensor) is not None:
            t._values = FileValues(t._values.tensor)
            count += 1
    return count


def release_tensor(t: gs.Tensor) -> None:
    """Let go of the memory map a constant holds (its values load again from the file when next read)."""
    if isinstance(t, gs.Constant) and isinstance(t._values, FileArray) and t._values.source is not None:
        t._values = FileValues(t._values.source)


def release(graph: gs.Graph) -> None:
    """``release_tensor`` for every constant of the graph tree."""
    for t in _constants(graph):
        release_tensor(t)


class _Spill:
    """One temporary file per process for values spilled out of memory; removed at exit."""

    path: str | None = None

    @classmethod
    def write(cls, arr: np.ndarray) -> tuple[str, int]:
        if cls.path is None:
            folder = tempfile.mkdtemp(prefix="onnxopt-spill-")
            atexit.register(shutil.rmtree, folder, True)
            cls.path = os.path.join(folder, "weights.bin")
        with open(cls.path, "ab") as f:
            pad = -f.tell() % model_io.ALIGNMENT
            f.write(b"\0" * pad)
            offset = f.tell()
            f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
        return cls.path, offset


def prepare_export(graph: gs.Graph, spill: bool) -> None:
    """Before gs.export_onnx: release untouched maps (exported as their file reference, no bytes copied); with
    ``spill``, move computed values of ``SPILL_MIN`` bytes or more to the spill file; a constant imported from a
    file whose values a pass replaced is no longer marked external."""
    spilled = 0
    for t in _constants(graph):
        release_tensor(t)
        values = t._values
        if not isinstance(values, np.ndarray):
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:
            t.data_location = None
        if not spill or values.nbytes < SPILL_MIN or values.dtype.kind not in "biuf" or t.export_dtype != t.dtype:
            continue
        try:
            data_type = helper.np_dtype_to_tensor_dtype(values.dtype)
        except Exception:
            continue
        file, offset = _Spill.write(values)
        meta = onnx.TensorProto(name=t.name, dims=list(values.shape), data_type=data_type)
        tensor_files.set_external(meta, file, offset, values.nbytes)
        t._values = FileValues(meta)
        spilled += values.nbytes
    if spilled:
        log.debug("spilled %.1f MiB of computed weights to %s", spilled / 2**20, _Spill.path)
