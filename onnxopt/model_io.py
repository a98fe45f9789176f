"""Loading and saving ONNX models safely.

- External data is resolved only inside the model's own folder: an absolute location or one that climbs
  out of it is refused before anything is read.
- The input file is never written.
- Output is written atomically: model (and its external-data file) go to a temporary folder beside the
  destination and are renamed into place, so a failed run leaves nothing half-written.
- Models over the protobuf limit, or whose input kept weights outside, are saved with external data.
- Large models (``EXTERNAL_THRESHOLD``) are never serialized whole: their weights stay in their file when loaded,
  are copied file to file when saved, and reach onnxruntime and onnx.checker through a file (``runnable``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from onnxopt.errors import UserError
from onnxopt.input_checks import check_model_versions
from onnxopt.tensor_files import copy_range, external_source, set_external, tensor_nbytes, write_all

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
# Tensor bytes from which a model is *large*: loaded with its weights left in their file (read on demand), saved with
# external data, never serialized whole (onnxruntime and onnx.checker get it through a file). Head-room below the
# 2 GiB protobuf limit. ONNXOPT_EXTERNAL_THRESHOLD overrides it (benchmarks); tests monkeypatch it: read it at call
# time (``model_io.EXTERNAL_THRESHOLD``), never import the value.
EXTERNAL_THRESHOLD = int(os.environ.get("ONNXOPT_EXTERNAL_THRESHOLD") or int(1.8 * 2**30))
KEEP_EXTERNAL_MIN = 64 << 10  # large models: tensors from this size stay in their file, smaller ones are read in
INLINE_MAX = 1024  # saving with external data: initializers from this size go to the data file (onnx's default)
ALIGN_ABOVE, ALIGNMENT = 1 << 20, 1 << 16  # tensors from 1 MiB start on 64 KiB boundaries: onnxruntime maps them


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, Constant/attribute tensors, in subgraphs and functions."""
    yield from external_data_helper._get_all_tensors(model)


def subgraph_protos(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The subgraphs a node holds in its attributes (If branches, Loop/Scan bodies)."""
    found: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        found.extend(attr.graphs)
    return found


def iter_graph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph below it, outer graphs before inner ones."""
    yield graph
    for node in graph.node:
        for sub in subgraph_protos(node):
            yield from iter_graph_protos(sub)


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model (subgraphs included) keeps its data in an external file."""
    return any(external_data_helper.uses_external_data(t) for t in all_tensors(model))


def data_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data the model holds, inline or external (subgraphs and Constant attributes included)."""
    return sum(tensor_nbytes(t) for t in all_tensors(model))


def is_large(model: onnx.ModelProto) -> bool:
    """Whether the model must go through files: it keeps data outside, or holds ``EXTERNAL_THRESHOLD`` or more."""
    return has_external_data(model) or data_bytes(model) >= EXTERNAL_THRESHOLD


def _check_external_locations(model: onnx.ModelProto, base_dir: Path, name: str) -> None:
    base = base_dir.resolve()
    for tensor in all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise UserError(f"{name}: tensor '{tensor.name}' is marked external but names no file; re-export the model")
        if os.path.isabs(location) or Path(location).drive:
            raise UserError(
                f"{name}: tensor '{tensor.name}' points to the absolute path '{location}'; external data must sit in "
                f"the model's folder — move the file beside the model and use a relative location"
            )
        target = (base / location).resolve()
        if base not in target.parents:
            raise UserError(
                f"{name}: tensor '{tensor.name}' points outside the model's folder ('{location}'); refusing to read it"
            )
        if not target.is_file():
            raise UserError(
                f"{name}: external data file '{location}' of tensor '{tensor.name}' is missing; "
                f"copy it beside the model"
            )
        size = target.stat().st_size
        offset, length = int(info.get("offset", 0) or 0), int(info.get("length", 0) or 0)
        if offset + length > size:
            raise UserError(
                f"{name}: external data file '{location}' is too short for tensor '{tensor.name}' "
                f"(needs {offset + length} bytes, has {size}); the file is truncated"
            )


def load_model(path: str | os.PathLike, *, load_external: bool = True) -> onnx.ModelProto:
    """Load a model, checking that it is a readable ONNX file and that its external data stays in its folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an ONNX model file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty; it is not an ONNX model")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid ONNX model (unreadable or truncated protobuf: {e})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise UserError(f"{path}: not a valid ONNX model (no graph found; is the file truncated or another format?)")
    if not model.opset_import:
        raise UserError(f"{path}: the model declares no opset; it is not a valid ONNX model")
    check_model_versions(model, str(path))  # an opset or IR version newer than onnx knows: refused, not guessed
    external = has_external_data(model)
    if external:
        _check_external_locations(model, path.parent, str(path))
    try:
        # with external data the checker must resolve locations relative to the model's folder: give it the path
        onnx.checker.check_model(str(path) if external else model, full_check=False)
    except (onnx.checker.ValidationError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
        raise UserError(f"{path}: not a valid ONNX model ({first})") from None
    if external:
        if load_external and data_bytes(model) >= EXTERNAL_THRESHOLD:
            _reference_external_data(model, path.parent)
        elif load_external:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
    return model


def _reference_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """A large model's weights stay in their file: each large external tensor names its file by absolute path
    (``external_source``; its location was checked to lie in the model's folder) and is read when a pass asks for
    its values (``onnxopt.weights``); small ones are read in now. Such a model reaches onnxruntime, onnx.checker
    and disk only through ``write_model``, which copies the bytes file to file."""
    base = base_dir.resolve()
    for t in all_tensors(model):
        if not external_data_helper.uses_external_data(t):
            continue
        if tensor_nbytes(t) < KEEP_EXTERNAL_MIN:
            external_data_helper.load_external_data_for_tensor(t, str(base))
            continue
        for e in t.external_data:
            if e.key == "location":
                e.value = str((base / e.value).resolve())
    log.info("large model (%.2f GiB of tensor data): weights are read from their file when needed",
             data_bytes(model) / 2**30)


def model_size(model: onnx.ModelProto) -> int:
    """Bytes of the model: its serialized size when small and inline (protobuf's ``ByteSize`` serializes, and fails
    past 2 GB); for a large one its tensor data plus the serialized size of its other nodes."""
    if not is_large(model):
        return model.ByteSize()
    return data_bytes(model) + sum(n.ByteSize() for n in model.graph.node if n.op_type != "Constant")


def file_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a model file and the external data files it names (each counted once)."""
    path = Path(path)
    total = path.stat().st_size
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:
        return total
    locations = {e.value for t in all_tensors(model) for e in t.external_data if e.key == "location"}
    return total + sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())


def write_model(model: onnx.ModelProto, path: str | os.PathLike, data_name: str | None) -> None:
    """Write ``model`` to ``path`` (not atomic: ``save_model`` is), never serializing it whole; ``model`` is unchanged.

    With ``data_name``, initializers of ``INLINE_MAX`` bytes or more and every tensor a large-model load left in
    its file go to ``data_name`` beside ``path``, one tensor at a time: inline bytes are written, file-backed ones
    copied file to file (``os.copy_file_range``); tensors from ``ALIGN_ABOVE`` start on ``ALIGNMENT`` boundaries
    so onnxruntime maps them instead of reading them. Without, everything is written inline.
    """
    path = Path(path)
    if data_name is None and not has_external_data(model):
        onnx.save_model(model, str(path))
        return
    to_save = onnx.ModelProto()
    to_save.CopyFrom(model)  # a large model's weights stay in their files: this copies the small tensors only
    for t in all_tensors(to_save):
        if external_data_helper.uses_external_data(t) and external_source(t) is None:
            raise ValueError(f"tensor '{t.name}' names its external data by a relative path, which cannot be "
                             f"resolved here; load the model with onnxopt.model_io.load_model")
    fds: dict[str, int] = {}
    out = os.open(path.parent / data_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if data_name else None
    end = 0

    def place(length: int) -> int:
        nonlocal end
        start = end if length < ALIGN_ABOVE else -(-end // ALIGNMENT) * ALIGNMENT
        end = start + length
        return start

    try:
        for t in all_tensors(to_save):
            src = external_source(t)
            if src is None:
                continue
            file, offset, length = src
            if file not in fds:
                fds[file] = os.open(file, os.O_RDONLY)
            if out is None:
                t.raw_data = os.pread(fds[file], length, offset)
                t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]
                continue
            start = place(length)
            copy_range(fds[file], offset, length, out, start)
            set_external(t, data_name, start, length)
        for g in iter_graph_protos(to_save.graph) if out is not None else ():
            for t in g.initializer:
                if (t.HasField("raw_data") and not external_data_helper.uses_external_data(t)
                        and tensor_nbytes(t) >= INLINE_MAX):
                    data = t.raw_data
                    start = place(len(data))
                    write_all(out, data, start)
                    set_external(t, data_name, start, len(data))
    finally:
        for fd in [*fds.values(), *([out] if out is not None else [])]:
            os.close(fd)
    if out is not None and end == 0:
        os.unlink(path.parent / data_name)
    onnx.save_model(to_save, str(path))


class StagedModel(os.PathLike):
    """A model written with external data into a temporary folder, removed when this object is dropped."""

    def __init__(self, model: onnx.ModelProto):
        self.folder = tempfile.mkdtemp(prefix="onnxopt-stage-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.path = os.path.join(self.folder, "model.onnx")
        write_model(model, self.path, "model.onnx.data")

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def runnable(model: onnx.ModelProto) -> onnx.ModelProto | StagedModel:
    """``model`` as onnxruntime and onnx.checker can take it: itself when small and inline, else written (external
    data) into a temporary folder that goes away with the returned object: give them ``os.fspath`` of it."""
    return StagedModel(model) if is_large(model) else model


def check_model(model: onnx.ModelProto | str | os.PathLike, *, full_check: bool = True) -> None:
    """onnx.checker on a model or a path; a large model is checked from a file (its in-memory form cannot be)."""
    if isinstance(model, onnx.ModelProto):
        staged = runnable(model)
        if isinstance(staged, StagedModel):
            onnx.checker.check_model(os.fspath(staged), full_check=full_check)
            return
    onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else os.fspath(model), full_check=full_check)


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, before any work, if the output cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name for the output model")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{path}: '{folder}' is a file, not a folder; choose another output path")
    if not folder.is_dir():
        raise UserError(f"{path}: the folder '{folder}' does not exist; create it or choose another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write into '{folder}' (permission denied); choose another output path")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{path}: the existing file is read-only; choose another output path")


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Save atomically. ``external_data=None`` chooses: external when the model is too large for one protobuf."""
    path = Path(path)
    check_writable(path)
    if external_data is None:
        external_data = is_large(model)
    data_name = path.name + ".data"
    target = str((path.parent / data_name).resolve())
    if any((external_source(t) or ("",))[0] == target for t in all_tensors(model)):
        raise UserError(f"{path}: its data file '{data_name}' is the one the input model's weights are read from; "
                        f"choose another output name")
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=".onnxopt-", dir=path.parent if str(path.parent) else "."))
    except OSError as e:
        raise UserError(f"{path}: cannot write into '{path.parent}' ({e.strerror or e}); choose another output path"
                        ) from None
    try:
        tmp_model = tmp_dir / path.name
        write_model(model, tmp_model, data_name if external_data else None)
        tmp_data = tmp_dir / data_name
        if tmp_data.exists():
            os.replace(tmp_data, path.parent / data_name)
        os.replace(tmp_model, path)
    except OSError as e:
        raise UserError(f"{path}: could not write the output ({e.strerror or e}); choose another output path") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("saved %s%s", path, " with external data" if external_data else "")
    return path
