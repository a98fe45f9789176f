"""The pruning step of every target's recipe (channel pruning, magnitude pruning), from the user's options.

Order: the target's canonicalization has already run (BatchNorm folded into Conv/Gemm, constants folded, shapes
inferred), so channel pruning sees one clean form and its L1/L2 scores already carry the BatchNorm scale. Then
PruneChannels -> ReconstructWeights (with calibration data) -> canonicalize again (shapes, folding, dead code),
then MagnitudePrune (``sparsity``), which zeroes weights of the pruned model and changes no shapes.
"""

from __future__ import annotations

from typing import Any

from onnxopt.pass_manager import FixedPoint, Pass


def _canonicalize(options: dict[str, Any]) -> list[Pass | FixedPoint]:
    try:
        from onnxopt.passes.canonicalize import canonicalize
    except ImportError:  # canonicalization not built yet: PruneChannels re-infers shapes itself
        return []
    return list(canonicalize(options))


def prune_steps(options: dict[str, Any]) -> list[Pass | FixedPoint]:
    """Passes that prune as ``options`` ask (``prune``: FLOP fraction, ``sparsity``); empty when not asked."""
    from onnxopt.passes.magnitude_prune import MagnitudePrune
    from onnxopt.passes.prune_channels import PruneChannels
    from onnxopt.passes.reconstruct_weights import ReconstructWeights

    steps: list[Pass | FixedPoint] = []
    if options.get("prune"):
        steps += [PruneChannels(), ReconstructWeights(), *_canonicalize(options)]
    if options.get("sparsity"):
        steps.append(MagnitudePrune())
    return steps
