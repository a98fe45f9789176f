"""The differential check every pass test uses: run before and after, compare, and full-check the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxopt.ir import Model
from onnxopt.model_io import iter_graph_protos
from onnxopt.pass_manager import FixedPoint, Pass, PassContext, PassManager
from onnxopt.verify import compare_outputs, format_diffs, make_feeds, run_model


def apply_passes(proto: onnx.ModelProto, passes: Sequence[Pass | FixedPoint], ctx: PassContext | None = None
                 ) -> tuple[onnx.ModelProto, dict]:
    model = Model.from_onnx(proto)
    report = PassManager(list(passes)).run(model, ctx or PassContext())
    return model.to_onnx(), report.to_dict()


def assert_equivalent(before: onnx.ModelProto, after: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None,
                      rtol: float = 1e-4, atol: float = 1e-5, engine: str = "onnxruntime") -> None:
    """``after`` passes onnx's full check and gives the same outputs as ``before`` on the same inputs."""
    onnx.checker.check_model(after, full_check=True)
    feeds = dict(feeds) if feeds is not None else make_feeds(before)
    ref = run_model(before, feeds, engine, optimize=False)
    got = run_model(after, feeds, engine, optimize=False)
    assert list(ref) == list(got), f"outputs differ: {list(ref)} vs {list(got)}"
    diffs = compare_outputs(ref, got, rtol=rtol, atol=atol)
    assert all(d.ok for d in diffs), format_diffs(diffs)


def op_types(proto: onnx.ModelProto, recurse: bool = True) -> list[str]:
    """Op types of every node, subgraphs included."""
    graphs = iter_graph_protos(proto.graph) if recurse else [proto.graph]
    return [node.op_type for g in graphs for node in g.node]
