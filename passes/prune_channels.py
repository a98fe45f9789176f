"""PruneChannels: structured channel pruning over dependency groups, to a FLOP budget."""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.analysis.dependency_groups import Analysis, Group, analyze
from onnxopt.analysis.flops import count_costs, node_flops
from onnxopt.analysis.layerwise import calibration_feeds, capture_stats
from onnxopt.errors import UserError
from onnxopt.ir import Model, constant_value, unique_name
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.pass_state import BatchNormScales, PruneReport
from onnxopt.passes.reconstruct_weights import fidelity
from onnxopt.recovery import PruneConsumer, PruneState

log = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "bn", "activation", "reconstruction")
WEIGHT_ROLES = ("weight_in", "weight_out")
SMALL_GROUP_STEPS = 8  # groups with fewer channels than this many rounding steps may round to multiples of 4
TARGET_SLACK = 0.02  # FLOP fraction the strict rounding may miss the target by before small groups round finer


def _weight_scores(g: Group, norm: str, roles: tuple[str, ...] = WEIGHT_ROLES) -> list[np.ndarray]:
    per_member = []
    for m in g.members:
        if m.kind != "slice" or m.role not in roles:
            continue
        w = constant_value(m.node.inputs[m.index])
        s = np.array([float(np.sum(np.abs(w.take(c[m.tensor], axis=m.axis)) ** (1 if norm == "l1" else 2)))
                      if m.tensor in c else 0.0 for c in g.channels])
        per_member.append(s if norm == "l1" else np.sqrt(s))
    return per_member


def _bn_scores(g: Group, ctx: PassContext) -> list[np.ndarray]:
    out = []
    for m in g.members:
        if m.role == "bn_scale":
            gamma = constant_value(m.node.inputs[1])
            var = constant_value(m.node.inputs[4])
            scale = np.abs(gamma) / np.sqrt(var + float(m.node.attrs.get("epsilon", 1e-5)))
            out.append(np.array([float(np.sum(scale[c[m.tensor]])) for c in g.channels]))
    bn = ctx.state(BatchNormScales)  # {conv node name: per-output-channel |gamma|/sigma}, if recorded
    recorded = bn.scales if bn is not None else {}
    for m in g.members:
        if m.role == "weight_out" and m.node.name in recorded:
            scale = np.asarray(recorded[m.node.name]).reshape(-1)
            if any(np.max(c[m.tensor], initial=-1) >= scale.size for c in g.channels):
                continue  # recorded for another shape of this node (it was pruned or rewritten since)
            out.append(np.array([float(np.sum(scale[c[m.tensor]])) for c in g.channels]))
    return out


def _combine(per_member: list[np.ndarray], n: int) -> np.ndarray:
    """Mean over members of each member's scores divided by its mean (members have different scales)."""
    if not per_member:
        return np.zeros(n)
    return np.mean([s / (s.mean() + 1e-12) for s in per_member], axis=0)


def importance(a: Analysis, criterion: str, ctx: PassContext, stats: dict[str, dict[str, np.ndarray]] | None
               ) -> dict[int, np.ndarray]:
    """Score per channel (component) of each prunable group; low scores go first."""
    scores = {}
    for g in ctx.progress_bar(a.prunable, "pruning: scoring channels", unit="group"):
        per: list[np.ndarray] = []
        if criterion == "bn":
            per = _bn_scores(g, ctx)
        elif criterion == "activation" and stats:
            for t in g.tensors:
                if t in stats:
                    per.append(np.array([float(np.mean(stats[t]["abs"][c[t]])) if t in c else 0.0
                                         for c in g.channels]))
        elif criterion == "reconstruction" and stats:
            for m in g.members:
                if m.role == "weight_in" and m.kind == "slice" and m.tensor in stats:
                    w = constant_value(m.node.inputs[m.index])
                    sq = stats[m.tensor]["sq"]
                    per.append(np.array([sum(float(np.sum(w.take([i], axis=m.axis) ** 2)) * sq[i] for i in c[m.tensor])
                                         if m.tensor in c else 0.0 for c in g.channels]))
        if not per:
            if criterion not in ("l1", "l2"):  # l1 and l2 score the weights themselves: no fallback
                ctx.decline("PruneChannels", g.name, f"criterion {criterion} has nothing to score here; using l2")
            per = _weight_scores(g, "l1" if criterion == "l1" else "l2")
        scores[g.id] = _combine(per, g.size)
    return scores


class _CostModel:
    """FLOPs as a function of channels removed per group: each node's FLOPs scale with the kept fraction of its
    channel tensors (input and output of dense Conv/Gemm/MatMul, the output of everything else)."""

    def __init__(self, a: Analysis, order: dict[int, np.ndarray]):
        self.a = a
        self.terms = []
        cg = a.cg
        for node in a.graph.nodes:
            f = node_flops(node) or 0
            if not f:
                continue
            outs = [t.name for t in node.outputs[:1] if t.name in cg.axis]
            factors = list(outs)
            if node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and int(node.attrs.get("group", 1)) == 1:
                factors += [t.name for t in node.inputs if t.name in cg.axis and t.name not in factors]
            self.terms.append((f, factors))
        self.total = sum(f for f, _ in self.terms) or 1
        self.cum: dict[int, dict[str, np.ndarray]] = {}
        for g in a.prunable:
            self.cum[g.id] = {t: np.concatenate([[0], np.cumsum([len(g.channels[k].get(t, ())) for k in order[g.id]])])
                              for t in g.tensors}

    def flops(self, removal: dict[int, int]) -> float:
        removed: dict[str, int] = {}
        for gid, n in removal.items():
            for t, cum in self.cum[gid].items():
                removed[t] = removed.get(t, 0) + int(cum[n])
        total = 0.0
        for f, factors in self.terms:
            for t in factors:
                f *= 1.0 - removed.get(t, 0) / self.a.cg.size(t)
            total += f
        return total


def _round_kept(g: Group, kept: int, min_keep: float, round_to: int, relaxed: bool = False) -> int:
    """``kept`` moved to the nearest count the kernels like: a multiple of ``round_to`` channels (in components of
    the group) or the whole group, never under ``min_keep``. Small groups are rounded too (a group of 24 at
    ``round_to`` 16 keeps 16 or 24, never 19), or with ``relaxed`` to multiples of 4 (20 is possible):
    onnxruntime runs a conv in its blocked NCHWc kernels only when its channel counts are multiples of 4, padded
    to the block (16 with AVX-512, 8 with AVX2), so 24 -> 20 saves nothing there but 24 -> 19 drops the conv to
    NCHW with reorders around it and made pruned models slower than unpruned ones."""
    n = g.size
    floor = max(math.ceil(min_keep * n), 1)
    kept = min(n, max(kept, floor))
    unit = len(next(iter(g.channels[0].values())))
    step = round_to // math.gcd(round_to, unit) if round_to > 1 else 1
    if relaxed and n < SMALL_GROUP_STEPS * step:
        step = math.gcd(step, 4)
    if step == 1:
        return kept
    down = kept // step * step
    up = min(n, -(-kept // step) * step)
    if down < max(floor, 1):
        return up
    return down if kept - down < up - kept else up


def plan_removal(a: Analysis, scores: dict[int, np.ndarray], target: float, scope: str, min_keep: float,
                 round_to: int) -> tuple[dict[int, np.ndarray], float]:
    """Channels to remove per group so that the FLOPs removed are as close to ``target`` as the search gets."""
    groups = a.prunable
    order = {g.id: np.argsort(scores[g.id], kind="stable") for g in groups}
    cost = _CostModel(a, order)
    norm = {g.id: np.sort(scores[g.id] / (scores[g.id].mean() + 1e-12)) for g in groups}

    def removal(p: float, relaxed: bool) -> dict[int, int]:
        out = {}
        for g in groups:
            drop = int(np.searchsorted(norm[g.id], p)) if scope == "global" else int(math.floor(p * g.size + 0.5))
            out[g.id] = g.size - _round_kept(g, g.size - drop, min_keep, round_to, relaxed)
        return out

    def reached(rem: dict[int, int]) -> float:
        return 1 - cost.flops(rem) / cost.total

    def search(relaxed: bool) -> dict[int, int]:
        hi = 1.0 if scope != "global" else float(max(v.max() for v in norm.values())) + 1.0
        lo = 0.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if reached(removal(mid, relaxed)) < target:
                lo = mid
            else:
                hi = mid
        return min((removal(lo, relaxed), removal(hi, relaxed)), key=lambda r: abs(reached(r) - target))

    # kernel-friendly counts first; only when they miss the target by more than the slack may small groups
    # round to multiples of 4 (still blocked in onnxruntime, but padded: less speed for the FLOPs)
    rem = search(False)
    if abs(reached(rem) - target) > TARGET_SLACK:
        finer = search(True)
        if abs(reached(finer) - target) < abs(reached(rem) - target):
            rem = finer
    return {gid: order[gid][:n] for gid, n in rem.items() if n}, reached(rem)


def _set_const(node: gs.Node, index: int, value: np.ndarray, graph: gs.Graph) -> None:
    old = node.inputs[index]
    node.inputs[index] = gs.Constant(unique_name(graph, f"{old.name}_pruned"), np.ascontiguousarray(value))


def apply_removal(a: Analysis, removal: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Remove the planned channels from every member; returns kept local indices per changed tensor."""
    cg, graph = a.cg, a.graph
    removed: dict[str, set[int]] = {}
    by_id = {g.id: g for g in a.groups}
    for gid, comps in removal.items():
        for k in comps:
            for t, idx in by_id[gid].channels[int(k)].items():
                removed.setdefault(t, set()).update(int(i) for i in idx)
    kept = {t: np.array(sorted(set(range(cg.size(t))) - r), dtype=np.int64) for t, r in removed.items()}

    def count(t: str) -> int:
        return len(kept[t]) if t in kept else cg.size(t)

    for m in cg.members:
        node = m.node
        if m.kind == "slice" and m.tensor in kept:
            _set_const(node, m.index, constant_value(node.inputs[m.index]).take(kept[m.tensor], axis=m.axis), graph)
        elif m.kind == "group" and m.tensor in kept:
            node.attrs["group"] = count(m.tensor) // m.extra["per"]
        elif m.kind == "split" and any(o.name in kept for o in node.outputs):
            sizes = np.array([count(o.name) for o in node.outputs], dtype=np.int64)
            if "split" in node.attrs:
                node.attrs["split"] = [int(s) for s in sizes]
            elif cg.opset >= 13:
                node.attrs.pop("num_outputs", None)
                if len(node.inputs) > 1:
                    _set_const(node, 1, sizes, graph)
                else:
                    node.inputs.append(gs.Constant(unique_name(graph, f"{node.name}_split"), sizes))
            else:
                node.attrs["split"] = [int(s) for s in sizes]
        elif m.kind == "slice_range" and m.tensor in kept:
            start = int(np.sum(kept[m.tensor] < m.extra["start"]))
            for i, v in ((1, start), (2, start + count(m.extra["out"]))):
                arr = constant_value(node.inputs[i]).copy()
                arr[m.extra["k"]] = v
                _set_const(node, i, arr, graph)
        elif m.kind in ("reshape", "resize") and m.tensor in kept:
            arr = constant_value(node.inputs[m.index]).copy()
            arr[m.axis] = count(m.tensor)
            _set_const(node, m.index, arr, graph)
    for t in kept:
        tensor = cg.tensors[t]
        if isinstance(tensor, gs.Variable):
            tensor.shape = None
    graph.cleanup()
    return kept


@register_pass
class PruneChannels(Pass):
    """Remove whole channels (dependency groups) to cut the FLOPs by the fraction ``prune``.

    Rewrites: slices weights, biases, BatchNorm/InstanceNorm parameters, per-channel constants of elementwise ops,
    the ``group`` of grouped/depthwise convs, Split sizes, Slice ranges, Reshape targets and Resize sizes of every
    member of a pruned group; shapes are then re-inferred. Options: ``prune`` (fraction of FLOPs, 0 = no-op),
    ``prune_criterion`` (l1, l2, bn, activation, reconstruction), ``prune_scope`` (layer: the same fraction of
    every group; global: one ranking over normalized scores), ``prune_min_keep`` (never keep less than this
    fraction of a group, default 0.25), ``prune_round_to`` (kept counts a multiple of this or the whole group,
    small groups included, default 16: onnxruntime's blocked NCHWc convs pad channels to 16 with AVX-512 and
    leave counts that are not multiples of 4 to slower NCHW kernels with reorders around them: unrounded
    MobileNetV2 ran 1.75x slower than unpruned; when the target cannot be met within 0.02 small groups round to
    multiples of 4, and the FLOPs reached are reported), ``prune_exclude``.
    Declines: groups locked by the analysis (see ``describe_groups``); data criteria without calibration data
    fall back to l2. ``bn`` reads BatchNorm nodes still in the graph, or ``pass_state.BatchNormScales`` recorded before
    BN folding; without either it falls back to l2 (on a BN-folded graph l2 already carries the BN scale).
    """

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        target = float(ctx.option("prune") or 0.0)
        if target <= 0:
            return PassResult(False, {})
        if target >= 1:
            raise UserError(f"--prune {target}: give the fraction of FLOPs to remove, between 0 and 1")
        criterion = str(ctx.option("prune_criterion") or "l1").lower()
        if criterion not in CRITERIA:
            raise UserError(f"--prune-criterion {criterion}: choose one of {', '.join(CRITERIA)}")
        scope = str(ctx.option("prune_scope") or "layer")
        original = model.to_onnx()
        before = count_costs(original)
        a = analyze(model, set(ctx.option("prune_exclude") or ()))
        for g in a.locked:
            ctx.decline(self.name, g.name, g.locked)
        if not a.prunable:
            return PassResult(False, {"groups_pruned": 0})
        feeds = calibration_feeds(original, ctx, int(ctx.option("prune_samples") or 32))
        stats = None
        if criterion in ("activation", "reconstruction") and feeds:
            names = sorted({t for g in a.prunable for t in g.tensors})
            stats = capture_stats(original, ctx.progress_bar(feeds, "pruning: activation statistics", unit="sample"),
                                  {t: a.cg.axis[t] for t in names})
        scores = importance(a, criterion, ctx, stats)
        round_to = int(ctx.option("prune_round_to") or 16)
        if round_to % 4:
            log.warning("prune_round_to %d: channel counts that are not multiples of 4 leave onnxruntime's blocked "
                        "conv kernels; the pruned model may run slower than the unpruned one", round_to)
        removal, estimate = plan_removal(a, scores, target, scope, float(ctx.option("prune_min_keep") or 0.25),
                                         round_to)
        layers = [{"group": g.name, "channels_before": g.size, "channels_after": g.size - len(removal.get(g.id, ()))}
                  for g in a.prunable]
        consumers = [PruneConsumer(m.node.name, m.tensor, m.node.op)
                     for m in a.cg.members if m.role == "weight_in" and m.kind == "slice"]
        # grouped/depthwise convs: their kept outputs read only kept inputs, but those inputs drift as the
        # producer is re-fitted, so they are re-fitted too (per group)
        consumers += [PruneConsumer(m.node.name, m.node.inputs[0].name, m.node.op)
                      for m in a.cg.members if m.kind == "group" and m.node.op == "Conv"]
        kept = apply_removal(a, removal)
        model.replace_with(onnx.shape_inference.infer_shapes(model.to_onnx(), data_prop=True))
        pruned = model.to_onnx()
        after = count_costs(pruned)
        report = PruneReport(
            asked=target, criterion=criterion, scope=scope, round_to=round_to,
            flops_before=before.flops, flops_after=after.flops,
            flops_removed=round(1 - after.flops / max(before.flops, 1), 4),
            flops_removed_estimate=round(estimate, 4),
            params_before=before.params, params_after=after.params,
            groups=len(a.prunable), groups_locked=len(a.locked), layers=layers,
            fidelity=fidelity(original, pruned, feeds[:8]) if feeds else None,
        )
        ctx.set_state(report)
        ctx.set_state(PruneState(original, kept, feeds, [c for c in consumers if c.input in kept]))
        removed = sum(len(v) for v in removal.values())
        log.info("pruned %d channels in %d groups: FLOPs %d -> %d (%.1f%% removed, asked %.1f%%)", removed,
                 len(removal), before.flops, after.flops, 100 * report.flops_removed, 100 * target)
        return PassResult(bool(removal), {
            "groups_pruned": len(removal), "channels_removed": removed, "flops_before": before.flops,
            "flops_after": after.flops, "params_before": before.params, "params_after": after.params})
