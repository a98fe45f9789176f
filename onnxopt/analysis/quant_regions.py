"""What stays float when a model is quantized, and why.

Quantizing a tensor to 8 bits is harmless for a well-conditioned activation (a Conv output, a residual sum)
and ruinous for some intermediates. This analysis finds the latter, by structure or by calibration
statistics, and returns ``{id(node): reason}`` so the quantizer keeps those nodes (and the tensors only
they touch) in float:

- **normalizations written as elementary ops**: a ``Div`` (or ``Mul`` by a ``Reciprocal``) whose divisor
  comes from a ``Sqrt`` fed, within a few nodes, by ``ReduceMean``: every node between the normalized
  tensor ``x`` and that ``Div`` (the mean, ``x - mean``, its square, the variance, ``+ eps``, the ``Sqrt``)
  stays float; ``E[x^2] - E[x]^2`` cancels catastrophically at 8 bits (REFERENCE.md: 93% -> 22%);
- **GELU written out**: ``Erf`` with its ``Div``/``Mul`` by a constant before and the ``Add``/``Mul`` chain
  after it (``x * 0.5 * (1 + erf(x / sqrt 2))``);
- **op types the scheme keeps float** (``scheme.keep_float``: Softmax, LayerNormalization, Erf, Gelu by
  default);
- **concatenations of very different ranges** (detector heads: boxes 0..320 next to probabilities 0..1):
  ``wide_range_concats`` measures each Concat's input ranges from calibration and keeps it float when the
  largest input range exceeds the smallest by more than ``factor`` (default 16: one shared 8-bit scale
  would leave the narrowest input fewer than 256 / 16 = 16 levels).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx_graphsurgeon as gs

from onnxopt.ir import constant_value, producer

NORMALIZATION = "normalization written as elementary ops (its intermediates collapse at 8 bits)"
GELU = "GELU written out around Erf (kept float like Erf)"
WIDE_CONCAT = "Concat of inputs whose ranges differ by more than a factor {factor:g} (measured {ratio:.3g})"
_NORM_OPS = {"ReduceMean", "Sub", "Pow", "Mul", "Add", "Sqrt", "Div", "Reciprocal", "Cast"}
_DEPTH = 8
DEFAULT_CONCAT_FACTOR = 16.0


def _backward(start: Iterable[gs.Node], ops: set[str], depth: int) -> set[int]:
    """ids of nodes reachable backwards from ``start`` (included) through ``ops`` within ``depth`` hops."""
    seen: dict[int, gs.Node] = {}
    frontier = [(n, 0) for n in start]
    while frontier:
        node, d = frontier.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if d >= depth:
            continue
        for t in node.inputs:
            p = producer(t)
            if p is not None and p.op in ops:
                frontier.append((p, d + 1))
    return set(seen)


def _forward(tensor: gs.Tensor, depth: int) -> set[int]:
    seen: set[int] = set()
    frontier = [(n, 1) for n in tensor.outputs]
    while frontier:
        node, d = frontier.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if d >= depth:
            continue
        for out in node.outputs:
            frontier.extend((n, d + 1) for n in out.outputs)
    return seen


def _divisor_from_sqrt(node: gs.Node) -> bool:
    if node.op == "Div" and len(node.inputs) == 2:
        p = producer(node.inputs[1])
        return p is not None and p.op == "Sqrt"
    if node.op == "Mul":
        for t in node.inputs:
            p = producer(t)
            if p is not None and p.op == "Reciprocal":
                q = producer(p.inputs[0])
                if q is not None and q.op == "Sqrt":
                    return True
    return False


def normalization_regions(graph: gs.Graph) -> dict[int, str]:
    """Nodes of normalizations written as elementary ops (this graph only; callers walk subgraphs)."""
    found: dict[int, str] = {}
    for end in graph.nodes:
        if not _divisor_from_sqrt(end):
            continue
        back = _backward([end], _NORM_OPS, _DEPTH)
        by_id = {id(n): n for n in graph.nodes}
        means = [by_id[i] for i in back if i in by_id and by_id[i].op == "ReduceMean"]
        if not means:
            continue
        mean_ids = {id(m) for m in means}
        # x: the input of each ReduceMean that has no other ReduceMean of the region upstream of it
        sources = [m.inputs[0] for m in means
                   if not (_backward([m], _NORM_OPS, _DEPTH) - {id(m)}) & mean_ids]
        region: set[int] = set()
        for x in sources:
            region |= _forward(x, _DEPTH) & back
        region.add(id(end))
        for i in region:
            found.setdefault(i, NORMALIZATION)
    return found


def gelu_regions(graph: gs.Graph) -> dict[int, str]:
    """``Erf`` with the constant Div/Mul before it and the Add/Mul chain after it."""
    found: dict[int, str] = {}
    for erf in graph.nodes:
        if erf.op != "Erf":
            continue
        found[id(erf)] = GELU
        pre = producer(erf.inputs[0])
        if pre is not None and pre.op in ("Div", "Mul") and any(constant_value(t) is not None for t in pre.inputs):
            found[id(pre)] = GELU
        node = erf
        for _ in range(3):
            nxt = node.outputs[0].outputs if node.outputs else []
            if len(nxt) != 1 or nxt[0].op not in ("Add", "Mul"):
                break
            node = nxt[0]
            found[id(node)] = GELU
    return found


def float_regions(graph: gs.Graph, keep_float: Iterable[str] = ()) -> dict[int, str]:
    """``{id(node): reason}`` for the nodes of ``graph`` (not its subgraphs) that must stay float."""
    keep = set(keep_float)
    found: dict[int, str] = {}
    for node in graph.nodes:
        if node.op in keep:
            found[id(node)] = f"{node.op} is kept float by the scheme"
    found.update({k: v for k, v in normalization_regions(graph).items() if k not in found})
    if "Erf" in keep or "Gelu" in keep:
        found.update({k: v for k, v in gelu_regions(graph).items() if k not in found})
    return found


def range_width(lo: float, hi: float) -> float:
    """The width an asymmetric 8-bit range gives a tensor (it always includes 0)."""
    return max(hi, 0.0) - min(lo, 0.0)


def wide_range_concats(graph: gs.Graph, ranges: Mapping[str, tuple[float, float]],
                       factor: float = DEFAULT_CONCAT_FACTOR) -> dict[int, str]:
    """Concats whose calibrated input ranges differ by more than ``factor`` (see the module docstring).

    ``ranges``: tensor name -> (min, max) from calibration. Inputs without a range (constants, tensors
    never produced) are not compared.
    """
    found: dict[int, str] = {}
    for node in graph.nodes:
        if node.op != "Concat":
            continue
        widths = [range_width(*ranges[t.name]) for t in node.inputs if t.name in ranges]
        widths = [w for w in widths if w > 0]
        if len(widths) < 2:
            continue
        ratio = max(widths) / min(widths)
        if ratio > factor:
            found[id(node)] = WIDE_CONCAT.format(factor=factor, ratio=ratio)
    return found
