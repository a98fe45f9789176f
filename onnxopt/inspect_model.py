"""A summary of a model for `onnxopt inspect`: opset, interface with dynamic dims, ops, parameters, size."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxopt.model_io import all_tensors, iter_graph_protos


def op_histogram(model: onnx.ModelProto) -> Counter:
    """Op type (domain-qualified outside the ONNX domain) -> count, subgraphs included."""
    return Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                   for g in iter_graph_protos(model.graph) for node in g.node)


def node_count(model: onnx.ModelProto) -> int:
    return sum(op_histogram(model).values())


def parameter_count(model: onnx.ModelProto) -> int:
    total = 0
    for t in all_tensors(model):
        total += int(np.prod(t.dims)) if t.dims else 1
    return total


def _value_info(vi: onnx.ValueInfoProto) -> dict[str, Any]:
    tt = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    dtype = helper.tensor_dtype_to_string(tt.elem_type).replace("TensorProto.", "").lower() if tt.elem_type else "?"
    return {"name": vi.name, "dtype": dtype, "shape": dims}


def summarize(model: onnx.ModelProto, path: str | Path | None = None) -> dict[str, Any]:
    inits = {t.name for t in model.graph.initializer}
    external = sorted({e.value for t in all_tensors(model) for e in t.external_data
                       if e.key == "location"})
    return {
        "path": str(path) if path else None,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [_value_info(v) for v in model.graph.input if v.name not in inits],
        "initializer_inputs": sum(1 for v in model.graph.input if v.name in inits),
        "outputs": [_value_info(v) for v in model.graph.output],
        "nodes": node_count(model),
        "ops": dict(sorted(op_histogram(model).items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": parameter_count(model),
        "size_bytes": Path(path).stat().st_size if path else model.ByteSize(),
        "external_data": external,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"model      {s['path'] or '(in memory)'}",
             f"ir         {s['ir_version']}    producer {s['producer'] or '-'}",
             "opsets     " + ", ".join(f"{k} {v}" for k, v in s["opsets"].items())]
    for kind in ("inputs", "outputs"):
        for v in s[kind]:
            lines.append(f"{kind[:-1]:<10} {v['name']}: {v['dtype']}{v['shape']}")
    if s["initializer_inputs"]:
        lines.append(f"note       {s['initializer_inputs']} initializers are also listed as graph inputs")
    lines.append(f"nodes      {s['nodes']}")
    lines.append(f"parameters {s['parameters']:,}")
    lines.append(f"size       {s['size_bytes']:,} bytes" + (f" + external data {s['external_data']}"
                                                           if s["external_data"] else ""))
    lines.append("ops        " + ", ".join(f"{k} {v}" for k, v in s["ops"].items()))
    return "\n".join(lines)
