"""Loading and saving ONNX models safely.

- External data is resolved only inside the model's own folder: an absolute location or one that climbs
  out of it is refused before anything is read.
- The input file is never written.
- Output is written atomically: model (and its external-data file) go to a temporary folder beside the
  destination and are renamed into place, so a failed run leaves nothing half-written.
- Models over the protobuf limit, or whose input kept weights outside, are saved with external data.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from onnxopt.errors import UserError

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_THRESHOLD = int(1.8 * 2**30)  # leave head-room below the 2 GiB protobuf limit


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
        if load_external:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
    return model


def model_size(model: onnx.ModelProto) -> int:
    """Serialized size in bytes (protobuf computes it without serializing)."""
    return model.ByteSize()


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
        external_data = has_external_data(model) or model_size(model) > EXTERNAL_THRESHOLD
    data_name = path.name + ".data"
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=".onnxopt-", dir=path.parent if str(path.parent) else "."))
    except OSError as e:
        raise UserError(f"{path}: cannot write into '{path.parent}' ({e.strerror or e}); choose another output path"
                        ) from None
    try:
        tmp_model = tmp_dir / path.name
        if external_data:
            to_save = onnx.ModelProto()
            to_save.CopyFrom(model)
            onnx.save_model(
                to_save, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                location=data_name, size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(tmp_model))
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
