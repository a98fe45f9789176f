"""Incremental capture of layer inputs for the layer-wise engine (``layerwise``), layer after layer in graph order.

A layer-wise fit visits the layers in graph order and needs each one's input from the model as fitted so far. Run
from the graph inputs, the k-th capture recomputes the whole prefix of the model: over all layers the cost grows
with the square of the depth (measured: a third of FitQuantizedWeights' time on MobileNetV2). ``InputCapture``
keeps the inputs it captured (per feed) and computes the next one from them: a layer's input depends only on the
layers before it in graph order, which are fitted already and never change again, so a captured input stays exact
for the rest of the run. The model cut for the next input stops at any kept tensor (it becomes a graph input of
the cut): a chain runs one layer, a residual block the few nodes back to kept tensors. Kept values are bounded by
``max_bytes`` (the oldest go first; the cut then runs further back, the values stay the same). onnxruntime runs
the same kernels on the cut as on the whole model, so the values are the ones ``layerwise.capture`` gives.

Models with control flow (If/Loop/Scan: outer-scope reads) and tensors that a kept value cannot stand for fall back
to ``layerwise.capture`` of the whole prefix.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from onnxopt.verify import ort_session

from .layerwise import Feed, Inputs, Layer, RowPlan, capture

log = logging.getLogger(__name__)

MAX_BYTES = 768 << 20


class InputCapture:
    """Layer inputs from the current model, computed from the inputs captured before (see the module docstring)."""

    def __init__(self, feeds: Sequence[Feed], max_bytes: int = MAX_BYTES, optimize: bool = False) -> None:
        self.feeds = list(feeds)
        self.max_bytes = int(max_bytes)
        self.optimize = optimize
        self.kept: OrderedDict[str, list[np.ndarray]] = OrderedDict()
        self.bytes = 0

    def values(self, proto: onnx.ModelProto, name: str, keep: bool = True) -> list[np.ndarray]:
        """The value of tensor ``name`` per feed, in ``proto`` as it is now; kept for the later calls unless ``keep``
        is False (a tensor that a later step changes, such as a layer's output before its bias is corrected: only
        tensors that depend on finished layers alone may be kept)."""
        if name in self.kept:
            return self.kept[name]
        cut = self._cut(proto, name)
        if cut is None:
            got = [v[name] for v in capture(proto, self.feeds, [name], optimize=self.optimize)]
        else:
            model, stops = cut
            sess = ort_session(model, optimize=self.optimize)
            known = {i.name for i in sess.get_inputs()}
            got = []
            for f, feed in enumerate(self.feeds):
                inp = {k: v for k, v in feed.items() if k in known}
                inp.update({s: self.kept[s][f] for s in stops})
                got.append(sess.run([name], inp)[0])
        if keep:
            self._keep(name, got)
        return got

    def _keep(self, name: str, values: list[np.ndarray]) -> None:
        size = sum(int(np.asarray(v).nbytes) for v in values)
        if size > self.max_bytes:
            return
        self.kept[name] = values
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.kept.popitem(last=False)
            self.bytes -= sum(int(np.asarray(v).nbytes) for v in old)

    def _cut(self, proto: onnx.ModelProto, name: str) -> tuple[onnx.ModelProto, list[str]] | None:
        """``proto`` cut to what computes ``name`` from the graph inputs and the kept tensors (those reached become
        inputs); None when the graph has control flow or nothing kept is reached (capture the whole prefix)."""
        g = proto.graph
        if any(n.op_type in ("If", "Loop", "Scan") for n in g.node):
            return None
        producers = {o: i for i, n in enumerate(g.node) for o in n.output}
        inits = {t.name for t in g.initializer}
        graph_inputs = {i.name: i for i in g.input}
        need, seen, nodes, stops = [name], set(), set(), []
        while need:
            t = need.pop()
            if t in seen or not t or t in inits or t in graph_inputs:
                continue  # constants are in the cut; graph inputs come from the feeds
            seen.add(t)
            if t != name and t in self.kept:
                stops.append(t)
                continue
            i = producers.get(t)
            if i is None:
                return None  # produced by nothing: not a tensor of this graph
            if i not in nodes:
                nodes.add(i)
                need.extend(g.node[i].input)
        if not stops:
            return None
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        mg = m.graph
        keep_nodes = [mg.node[i] for i in sorted(nodes)]
        used = {x for n in keep_nodes for x in n.input}
        keep_inits = [t for t in mg.initializer if t.name in used]
        ins = [graph_inputs[t] for t in graph_inputs if t in used]
        for s in stops:
            v = np.asarray(self.kept[s][0])
            ins.append(helper.make_tensor_value_info(s, helper.np_dtype_to_tensor_dtype(v.dtype), None))
        types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.output)}
        del mg.node[:]
        mg.node.extend(keep_nodes)
        del mg.initializer[:]
        mg.initializer.extend(keep_inits)
        del mg.input[:]
        mg.input.extend(ins)
        del mg.output[:]
        mg.output.append(helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
        del mg.value_info[:]
        return m, stops

    def inputs(self, proto: onnx.ModelProto, layer: Layer, name: str, out: str, plan: RowPlan) -> Inputs:
        """``layerwise.inputs`` through the kept values: ``layer``'s input rows (tensor ``name``) at ``plan``'s
        positions of ``out``, per feed, and their sums over all positions."""
        got = Inputs([], [], [])
        for f, value in enumerate(self.values(proto, name)):
            got.rows.append(layer.in_rows(value, plan.positions[out][f], plan.shapes[out][f]))
            s, n = layer.in_means(value, plan.shapes[out][f])
            got.sums.append(s)
            got.counts.append(n)
        return got
