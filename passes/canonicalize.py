"""The canonicalization pipeline: one clean form that later passes can rely on."""

from __future__ import annotations

import logging
from typing import Any

from onnxopt.pass_manager import FixedPoint, Pass

from .constants_to_initializers import ConstantsToInitializers
from .eliminate_dead_code import EliminateDeadCode
from .fold_constants import FoldConstants
from .fold_shapes import FoldShapes
from .infer_shapes import InferShapes
from .upgrade_opset import UpgradeOpset

log = logging.getLogger(__name__)


def _second_engineer_passes() -> dict[str, type[Pass]]:
    """The no-op removal, merging, BN folding, CSE and dedupe passes, in fixed-point order, where present."""
    found: dict[str, type[Pass]] = {}
    # TODO(lead): these passes are written in parallel; replace this block with plain imports once all exist.
    try:
        from .remove_noops import RemoveNoOps
        found["RemoveNoOps"] = RemoveNoOps
    except ImportError:
        log.warning("RemoveNoOps not available: canonicalize runs without it")
    try:
        from .merge_transposes import MergeTransposes
        found["MergeTransposes"] = MergeTransposes
    except ImportError:
        log.warning("MergeTransposes not available: canonicalize runs without it")
    try:
        from .merge_reshapes import MergeReshapes
        found["MergeReshapes"] = MergeReshapes
    except ImportError:
        log.warning("MergeReshapes not available: canonicalize runs without it")
    try:
        from .fold_batchnorm import FoldBatchNorm
        found["FoldBatchNorm"] = FoldBatchNorm
    except ImportError:
        log.warning("FoldBatchNorm not available: canonicalize runs without it")
    try:
        from .fold_conv_affine import FoldConvAffine
        found["FoldConvAffine"] = FoldConvAffine
    except ImportError:
        log.warning("FoldConvAffine not available: canonicalize runs without it")
    try:
        from .eliminate_common_subexpressions import EliminateCommonSubexpressions
        found["EliminateCommonSubexpressions"] = EliminateCommonSubexpressions
    except ImportError:
        log.warning("EliminateCommonSubexpressions not available: canonicalize runs without it")
    try:
        from .deduplicate_initializers import DeduplicateInitializers
        found["DeduplicateInitializers"] = DeduplicateInitializers
    except ImportError:
        log.warning("DeduplicateInitializers not available: canonicalize runs without it")
    return found


def canonicalize(options: dict[str, Any] | None = None) -> list[Pass | FixedPoint]:
    """The canonicalize pipeline.

    UpgradeOpset, ConstantsToInitializers, InferShapes, then to a fixed point: FoldShapes, FoldConstants,
    RemoveNoOps, MergeTransposes, MergeReshapes, FoldBatchNorm, FoldConvAffine, DeduplicateInitializers,
    EliminateCommonSubexpressions, EliminateDeadCode; then InferShapes once more for the final form.

    Options read here (the passes read theirs from the PassContext): ``max_iterations`` (fixed-point cap,
    default 10) and ``skip`` (pass names to leave out, e.g. ``["UpgradeOpset"]``).
    """
    options = dict(options or {})
    skip = set(options.get("skip", ()))
    others = _second_engineer_passes()
    loop: list[Pass] = [FoldShapes(), FoldConstants()]
    for name in ("RemoveNoOps", "MergeTransposes", "MergeReshapes", "FoldBatchNorm", "FoldConvAffine",
                 "DeduplicateInitializers", "EliminateCommonSubexpressions"):
        if name in others:
            loop.append(others[name]())
    loop.append(EliminateDeadCode())
    head: list[Pass] = [UpgradeOpset(), ConstantsToInitializers(), InferShapes()]
    pipeline: list[Pass | FixedPoint] = [p for p in head if p.name not in skip]
    pipeline.append(FixedPoint([p for p in loop if p.name not in skip],
                               max_iterations=int(options.get("max_iterations", 10)), name="canonicalize"))
    if "InferShapes" not in skip:
        pipeline.append(InferShapes())
    return pipeline
