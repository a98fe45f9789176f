"""ONNX backend node tests (generated from the onnx wheel) run through the interpreter.

Every case whose ops all have kernels runs and must match its expected outputs; a case is skipped, and reported as
skipped, only for a reason in ``SKIP`` below, for sequence/optional values, or for the op it lacks a kernel for.
The pass count by op, and the cases per missing kernel, are printed at the end of the session.
"""

from __future__ import annotations

import collections
import contextlib
import re
import warnings

import numpy as np
import onnx
import pytest

from onnxopt.interp import Interpreter
from onnxopt.interp.registry import lookup

# Cases skipped on purpose: (regex over the case name, reason). Keep it short and honest.
SKIP: list[tuple[str, str]] = []

# Cases whose expected values are hand-written with few digits: compared at the case's own (onnx default) tolerance.
USE_CASE_TOLERANCE = {
    "test_averagepool_2d_ceil_last_window_starts_on_pad": "expected output written with 4 decimals",
    "test_gridsample_bicubic": "expected output written with 4 decimals",
    "test_roialign_aligned_false": "expected output written with 4 decimals",
    "test_roialign_aligned_true": "expected output written with 4 decimals",
}

_FLOAT_DEFAULT = (1e-5, 1e-6)  # rtol, atol unless the case sets its own
_ONNX_DEFAULT = (1e-3, 1e-7)   # what collect_testcases puts on a case that sets nothing


def _graph_ops(graph: onnx.GraphProto, opsets: dict[str, int], functions: dict, out: set) -> None:
    for node in graph.node:
        key = (node.domain, node.op_type)
        if key in functions:
            f = functions[key]
            f_opsets = dict(opsets)
            f_opsets.update({i.domain: i.version for i in f.opset_import})
            _graph_ops(onnx.helper.make_graph(f.node, f.name, [], []), f_opsets, functions, out)
        else:
            dom = "" if node.domain == "ai.onnx" else node.domain
            out.add((dom, node.op_type, opsets.get(dom, 0)))
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _graph_ops(a.g, opsets, functions, out)
            for g in a.graphs:
                _graph_ops(g, opsets, functions, out)


def model_ops(model: onnx.ModelProto) -> set[tuple[str, str, int]]:
    """Every (domain, op, opset) a model runs, through subgraphs and model-local functions."""
    opsets = {("" if i.domain == "ai.onnx" else i.domain): i.version for i in model.opset_import}
    functions = {(f.domain, f.name): f for f in model.functions}
    out: set = set()
    _graph_ops(model.graph, opsets, functions, out)
    return out


def _collect():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    runnable, missing, lacking_by_case = [], collections.Counter(), {}
    for case in cases:
        ops = model_ops(case.model)
        lacking = sorted({f"{d}.{op}" if d else op for d, op, v in ops if lookup(op, d, v) is None})
        if lacking:
            missing.update(lacking)
            lacking_by_case[case.name] = lacking
            continue
        runnable.append(case)
    return cases, runnable, missing, lacking_by_case


ALL_CASES, CASES, MISSING, LACKING = _collect()
RESULTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)  # by op
TOTAL: collections.Counter = collections.Counter()  # by case


def _skip_reason(case) -> str | None:
    for pattern, reason in SKIP:
        if re.search(pattern, case.name):
            return reason
    return None


def _is_tensor(v) -> bool:
    return isinstance(v, (np.ndarray, onnx.TensorProto)) or np.isscalar(v)


def _array(v) -> np.ndarray:
    return onnx.numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v)


@pytest.fixture(scope="session", autouse=True)
def _report(request):
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or not RESULTS:
        return
    total = TOTAL
    lines = [
        "",
        f"ONNX node conformance: {len(ALL_CASES)} cases, {len(CASES)} with all ops implemented; "
        f"run {total['run']}, passed {total['passed']}, skipped {total['skipped']}, "
        f"skipped for a missing kernel {total['no kernel']}",
        *(f"  no kernel: {op:28s} {n:4d} cases" for op, n in sorted(MISSING.items())),
        *(f"  {op:28s} passed {c['passed']:4d} / run {c['run']:4d}  skipped {c['skipped']}"
          for op, c in sorted(RESULTS.items())),
    ]
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
        for line in lines:
            tr.write_line(line)


def _ops_of(case) -> set[str]:
    return {op for _, op, _ in model_ops(case.model)}


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_node_case(case):
    if case.name in LACKING:  # reported as a skip, so the count of cases not run is in every summary
        TOTAL["no kernel"] += 1
        pytest.skip(f"no interpreter kernel for {', '.join(LACKING[case.name])}")
    ops = _ops_of(case)
    reason = _skip_reason(case)
    if reason is None and not all(_is_tensor(v) for ins, outs in case.data_sets for v in list(ins) + list(outs)):
        reason = "sequence or optional values (the interpreter runs tensors only)"
    if reason:
        for op in ops:
            RESULTS[op]["skipped"] += 1
        TOTAL["skipped"] += 1
        pytest.skip(reason)
    TOTAL["run"] += 1
    for op in ops:
        RESULTS[op]["run"] += 1
    model = case.model
    rtol, atol = _FLOAT_DEFAULT
    if (case.rtol, case.atol) != _ONNX_DEFAULT or case.name in USE_CASE_TOLERANCE:
        rtol, atol = case.rtol, case.atol
    interp = Interpreter(model)
    in_names = [i.name for i in model.graph.input]
    out_names = [o.name for o in model.graph.output]
    for inputs, expected in case.data_sets:
        feeds = {n: _array(v) for n, v in zip(in_names, inputs, strict=False)}
        got = interp.run(feeds)
        for name, exp in zip(out_names, expected, strict=False):
            exp = _array(exp)
            res = np.asarray(got[name])
            assert res.dtype == exp.dtype, f"{name}: dtype {res.dtype}, expected {exp.dtype}"
            assert res.shape == exp.shape, f"{name}: shape {res.shape}, expected {exp.shape}"
            if exp.dtype.kind in "fc" or exp.dtype.kind == "V":
                r, a = rtol, atol
                if exp.dtype.itemsize <= 2:  # float16, bfloat16, float8: the case's own (looser) tolerance
                    r, a = max(rtol, case.rtol), max(atol, case.atol)
                np.testing.assert_allclose(res.astype(np.float64), exp.astype(np.float64), rtol=r, atol=a,
                                           err_msg=name)
            else:
                np.testing.assert_array_equal(res, exp, err_msg=name)
    for op in ops:
        RESULTS[op]["passed"] += 1
    TOTAL["passed"] += 1
