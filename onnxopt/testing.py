"""Helpers for users' own pytest suites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxopt.golden import GoldenReport, check


def assert_matches_golden(model_path: str | Path, golden_path: str | Path, **tol: Any) -> GoldenReport:
    """Assert the model reproduces its golden outputs; ``tol`` goes to :func:`onnxopt.golden.check`
    (``engine``, ``rtol``, ``atol``, ``per_output``, ``int_steps``, ``strict``). Raises AssertionError with the
    per-output report on a mismatch."""  # noqa: D205
    report = check(model_path, golden_path, **tol)
    if not report.ok:
        raise AssertionError(str(report))
    return report
