"""Tensors whose bytes live in files: sizes from metadata, file references, memory maps, file-to-file copies.

A large model's load (``model_io``) leaves each large tensor in its file and names that file by absolute path
(``external_source``); nothing here reads a tensor's bytes unless asked for its values (``tensor_array``, a read-only
memory map where it can be), and copies between files go through the kernel (``copy_range``).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

FOUR_BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from its metadata: never reads (or copies) the data itself."""
    if external_data_helper.uses_external_data(t):
        length = next((e.value for e in t.external_data if e.key == "length"), "")
        if length:
            return int(length)
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    count = 1
    for d in t.dims:
        count *= int(d)
    try:
        bits = 8 * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # a type numpy does not know
        bits = 8
    if t.data_type in FOUR_BIT:
        bits = 4
    return (count * bits + 7) // 8


def external_source(t: onnx.TensorProto) -> tuple[str, int, int] | None:
    """(absolute file, offset, length) of a tensor whose data a large-model load left in its file, else None."""
    if not external_data_helper.uses_external_data(t):
        return None
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if not os.path.isabs(location):
        return None
    return location, int(info.get("offset") or 0), int(info.get("length") or tensor_nbytes(t))


def tensor_array(t: onnx.TensorProto) -> np.ndarray:
    """The values of a tensor, a file-backed one (``external_source``) as a read-only memory map of its file (only
    the pages read come into memory) where its bytes are a numpy array as they are, else read in."""
    src = external_source(t)
    if src is None:
        return numpy_helper.to_array(t)
    file, offset, length = src
    shape = tuple(int(d) for d in t.dims)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    except Exception:
        dtype = None
    count = 1
    for d in shape:
        count *= d
    if (dtype is not None and sys.byteorder == "little" and t.data_type not in FOUR_BIT and count
            and dtype.kind != "O" and count * dtype.itemsize == length):
        return np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape)
    copy = onnx.TensorProto()
    copy.CopyFrom(t)
    with open(file, "rb") as f:
        f.seek(offset)
        copy.raw_data = f.read(length)
    copy.data_location = onnx.TensorProto.DEFAULT
    del copy.external_data[:]
    return numpy_helper.to_array(copy)


def set_external(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Mark ``t`` as kept in ``location`` at ``offset`` (its inline data cleared)."""
    t.ClearField("raw_data")
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        t.external_data.add(key=key, value=value)


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


_COPY_FILE_RANGE = hasattr(os, "copy_file_range")


def copy_range(src: int, offset: int, length: int, dst: int, dst_offset: int) -> None:
    """Copy ``length`` bytes file to file, in the kernel where it can (no bytes through Python's memory)."""
    global _COPY_FILE_RANGE
    done = 0
    while done < length:
        n = 0
        if _COPY_FILE_RANGE:
            try:
                n = os.copy_file_range(src, dst, length - done, offset + done, dst_offset + done)
            except OSError:  # another filesystem on an old kernel, or one that cannot: copy through a buffer
                _COPY_FILE_RANGE = False
        if n == 0:
            chunk = os.pread(src, min(length - done, 16 << 20), offset + done)
            if not chunk:
                raise OSError(f"external data ended {length - done} bytes early")
            write_all(dst, chunk, dst_offset + done)
            n = len(chunk)
        done += n
