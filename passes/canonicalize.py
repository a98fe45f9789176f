"""The canonicalization pipeline: one clean form that later passes can rely on."""

from __future__ import annotations

from typing import Any

from onnxopt.pass_manager import FixedPoint, Pass

from .constants_to_initializers import ConstantsToInitializers
from .deduplicate_initializers import DeduplicateInitializers
from .eliminate_common_subexpressions import EliminateCommonSubexpressions
from .eliminate_dead_code import EliminateDeadCode
from .eliminate_reshape_as import EliminateReshapeAs
from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldConstants
from .fold_conv_affine import FoldConvAffine
from .fold_shapes import FoldShapes
from .fuse_hard_activations import FuseHardActivations
from .fuse_matmul_add import FuseMatMulAdd
from .infer_shapes import InferShapes
from .inline_constant_if import InlineConstantIf
from .merge_reshapes import MergeReshapes
from .merge_transposes import MergeTransposes
from .remove_noops import RemoveNoOps
from .upgrade_opset import UpgradeOpset


def canonicalize(options: dict[str, Any] | None = None) -> list[Pass | FixedPoint]:
    """The canonicalize pipeline.

    UpgradeOpset, ConstantsToInitializers, InferShapes, then to a fixed point: FoldShapes, FoldConstants,
    InlineConstantIf, RemoveNoOps, EliminateReshapeAs, MergeTransposes, MergeReshapes, FoldBatchNorm, FoldConvAffine,
    FuseMatMulAdd, FuseHardActivations, DeduplicateInitializers, EliminateCommonSubexpressions, EliminateDeadCode,
    InferShapes (it reports a change only when a tensor gained information, so the next round sees the shapes that
    folding and inlining exposed); then InferShapes once more for the final form (skipped when the loop's last
    InferShapes modified nothing: it would repeat that run exactly).

    Options read here (the passes read theirs from the PassContext): ``max_iterations`` (fixed-point cap,
    default 10) and ``skip`` (pass names to leave out, e.g. ``["UpgradeOpset"]``).
    """
    options = dict(options or {})
    skip = set(options.get("skip", ()))
    loop_infer = InferShapes()
    loop: list[Pass] = [
        FoldShapes(), FoldConstants(), InlineConstantIf(), RemoveNoOps(), EliminateReshapeAs(), MergeTransposes(),
        MergeReshapes(), FoldBatchNorm(), FoldConvAffine(), FuseMatMulAdd(), FuseHardActivations(),
        DeduplicateInitializers(),
        EliminateCommonSubexpressions(), EliminateDeadCode(), loop_infer,
    ]
    head: list[Pass] = [UpgradeOpset(), ConstantsToInitializers(), InferShapes()]
    pipeline: list[Pass | FixedPoint] = [p for p in head if p.name not in skip]
    pipeline.append(FixedPoint([p for p in loop if p.name not in skip],
                               max_iterations=int(options.get("max_iterations", 10)), name="canonicalize"))
    if "InferShapes" not in skip:
        # right after the loop, whose last pass is loop_infer: skipped when that run modified nothing
        pipeline.append(InferShapes(follows=loop_infer))
    return pipeline
