"""Q/DQ building blocks shared by the quantizers: scale/zero-point arithmetic and the nodes that carry it.

- ``activation_params`` / ``weight_params``: (scale, zero point) of an activation range, and a weight quantized per
  tensor or per channel;
- ``QDQWriter``: writes the QuantizeLinear/DequantizeLinear pair of an activation, the int8 weight and int32 bias
  initializers + DequantizeLinear of a weighted op (Conv, ConvTranspose, Gemm, MatMul), and remembers the
  parameters of every DequantizeLinear it wrote (a bias is quantized from its input's and its weight's scales);
- ``_Names``: fresh tensor/node names across a graph and its subgraphs; ``_is_float``.

A helper module (leading underscore): ``passes/__init__.py`` does not import it as a pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.analysis.qdq_placement import is_float
from onnxopt.ir import constant_value, iter_graphs
from onnxopt.pass_manager import PassContext
from onnxopt.quant_scheme import QuantScheme, TensorQuant

# (weight input index, per-channel axis); Gemm's axis depends on transB, MatMul's on the weight's rank
WEIGHTED = {"Conv": (1, 0), "ConvTranspose": (1, 1), "Gemm": (1, None), "MatMul": (1, None)}
_FLOAT = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64)}


class _Names:
    """Fresh names: ``base``, else ``base_1``, ``base_2``... unused by any tensor or node of the graph and its
    subgraphs, nor by a name handed out before."""

    def __init__(self, graph: gs.Graph):
        self.used: set[str] = set()
        for g in iter_graphs(graph):
            self.used.update(g.tensors().keys())
            self.used.update(n.name for n in g.nodes if n.name)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


_is_float = is_float  # one definition, shared with the planner (analysis.qdq_placement)


def activation_params(lo: float, hi: float, q: TensorQuant) -> tuple[float, int]:
    """(scale, zero point) of a per-tensor activation range, always including 0."""
    qmin, qmax = q.qrange
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if q.symmetric:
        bound = max(abs(lo), abs(hi))
        qabs = min(abs(qmin), qmax) if qmin < 0 else qmax
        scale = bound / qabs if bound > 0 else 1.0
        zp = 0 if qmin < 0 else (qmin + qmax + 1) // 2
        return float(np.float32(scale)), int(zp)
    scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    scale = float(np.float32(scale))
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return scale, zp


def weight_params(w: np.ndarray, q: TensorQuant, axis: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantized weight, scale, zero point); per tensor when ``axis`` is None."""
    qmin, qmax = q.qrange
    if q.symmetric and qmin < 0:
        qmin = -qmax  # symmetric weights use [-127, 127] so that 0 and the scale are exact
    w = np.asarray(w, dtype=np.float32)
    red = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    if q.symmetric:
        absmax = np.max(np.abs(w), axis=red) if w.size else np.zeros(())
        scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
        zp = np.zeros(scale.shape, dtype=q.np_dtype)
    else:
        lo = np.minimum(np.min(w, axis=red), 0.0)
        hi = np.maximum(np.max(w, axis=red), 0.0)
        scale = np.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0).astype(np.float32)
        zp = np.clip(np.round(qmin - lo / scale), qmin, qmax).astype(q.np_dtype)
    scale, zp = np.asarray(scale, dtype=np.float32), np.asarray(zp, dtype=q.np_dtype)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    qw = np.clip(np.round(w / scale.reshape(shape)) + zp.reshape(shape).astype(np.float32), qmin, qmax)
    return qw.astype(q.np_dtype), scale, zp


def dequantized_weight(w: np.ndarray, q: TensorQuant, axis: int | None, dtype: type = np.float32) -> np.ndarray:
    """``w`` on the grid ``weight_params`` quantizes it to, back in float (what the int8 kernel multiplies by)."""
    qw, scale, zp = weight_params(w, q, axis)
    shape = [1] * np.ndim(w)
    if axis is not None:
        shape[axis] = -1
    return (qw.astype(dtype) - zp.astype(dtype).reshape(shape)) * scale.astype(dtype).reshape(shape)


def dequantized_activation(x: np.ndarray, lo: float, hi: float, q: TensorQuant) -> np.ndarray:
    """``x`` through per-tensor quantization of the range [lo, hi] (``activation_params``) and back, in float32."""
    scale, zp = activation_params(lo, hi, q)
    qmin, qmax = q.qrange
    return ((np.clip(np.round(x / scale) + zp, qmin, qmax) - zp) * scale).astype(np.float32)


class QDQWriter:
    """Writes the Q/DQ nodes of one quantization run: names come from ``namer``, counts go to ``stats``, weight
    parameters to ``params``, declines to ``ctx`` under ``pass_name``. ``dq`` maps id(DequantizeLinear output) to
    (scale, zero point) for an activation, (scale, axis) for a weight."""

    def __init__(self, ctx: PassContext, pass_name: str, namer: _Names, stats: dict[str, int],
                 params: dict[str, dict[str, Any]], opset: int) -> None:
        self.ctx, self.pass_name, self.namer, self.stats, self.params, self.opset = (
            ctx, pass_name, namer, stats, params, opset)
        self.dq: dict[int, tuple[Any, Any]] = {}

    def activation(self, graph: gs.Graph, t: gs.Tensor, scale: float, zp: int, q: TensorQuant,
                   node_ids: set[int], as_output: bool = True) -> None:
        """QuantizeLinear -> DequantizeLinear on ``t``; its readers in ``node_ids`` read the DequantizeLinear, which
        takes ``t``'s name when ``t`` is a graph output and ``as_output`` (else the graph output stays ``t``)."""
        namer = self.namer
        base = t.name
        s = gs.Constant(namer(f"{base}_scale"), np.array(scale, dtype=np.float32))
        z = gs.Constant(namer(f"{base}_zero_point"), np.array(zp, dtype=q.np_dtype))
        users = [n for n in t.outputs if id(n) in node_ids]
        out_idx = [i for i, o in enumerate(graph.outputs) if o is t] if as_output else []
        src = t
        if out_idx:  # the DequantizeLinear output takes the graph output's name
            t.name = namer(f"{base}_float")
            deq = gs.Variable(base, dtype=np.float32, shape=t.shape)
            for i in out_idx:
                graph.outputs[i] = deq
        else:
            deq = gs.Variable(namer(f"{base}_dequantized"), dtype=np.float32, shape=t.shape)
        qt = gs.Variable(namer(f"{base}_quantized"), dtype=q.np_dtype, shape=t.shape)
        graph.nodes.append(gs.Node("QuantizeLinear", namer(f"{base}_QuantizeLinear"), inputs=[src, s, z], outputs=[qt]))
        graph.nodes.append(gs.Node("DequantizeLinear", namer(f"{base}_DequantizeLinear"), inputs=[qt, s, z],
                                   outputs=[deq]))
        self.dq[id(deq)] = (scale, zp)
        for n in users:
            for i, inp in enumerate(n.inputs):
                if inp is src:
                    n.inputs[i] = deq

    def weights(self, graph: gs.Graph, node: gs.Node, scheme: QuantScheme,
                cache: dict[tuple[str, int | None], gs.Variable]) -> None:
        """int8 weight + DequantizeLinear for a weighted op whose input is quantized (one per weight and axis, kept
        in ``cache``), then its bias."""
        ctx, namer, stats, params, opset = self.ctx, self.namer, self.stats, self.params, self.opset
        where = f"{node.op} '{node.name}'"
        w_t = node.inputs[1]
        w = constant_value(w_t)
        if w is None or np.asarray(w).dtype not in _FLOAT:
            return  # MatMul of two activations: both already have Q/DQ
        if id(node.inputs[0]) not in self.dq:
            ctx.decline(self.pass_name, where, "its input was not quantized (no calibration range): weight kept float")
            return
        w = np.asarray(w, dtype=np.float32)
        axis = WEIGHTED[node.op][1]
        if node.op == "Gemm":
            if node.attrs.get("transA", 0) or w.ndim != 2:
                ctx.decline(self.pass_name, where, "Gemm with transA or a non-2-D weight: weight kept float")
                return
            axis = 0 if node.attrs.get("transB", 0) else 1
        elif node.op == "MatMul":
            axis = w.ndim - 1 if w.ndim >= 2 else None
        if axis is not None and not scheme.weights.per_channel:
            axis = None
        if axis is not None and opset < 13:
            ctx.decline(self.pass_name, where, f"per-channel weights need opset 13 (the model has {opset}); "
                        "quantized per tensor - upgrade the opset first")
            axis = None
        key = (w_t.name, axis)
        if key not in cache:
            qw, scale, zp = weight_params(w, scheme.weights, axis)
            base = w_t.name or namer("weight")
            attrs = {"axis": axis} if axis is not None else {}
            deq = gs.Variable(namer(f"{base}_dequantized"), dtype=np.float32, shape=list(w.shape))
            graph.nodes.append(gs.Node(
                "DequantizeLinear", namer(f"{base}_DequantizeLinear"), attrs=attrs,
                inputs=[gs.Constant(namer(f"{base}_quantized"), qw), gs.Constant(namer(f"{base}_scale"), scale),
                        gs.Constant(namer(f"{base}_zero_point"), zp)], outputs=[deq]))
            self.dq[id(deq)] = (scale, axis)
            cache[key] = deq
            params[w_t.name] = {"kind": "weight", "axis": axis, "channels": int(scale.size),
                                "scale_min": float(scale.min()), "scale_max": float(scale.max()),
                                "min": float(w.min()) if w.size else 0.0, "max": float(w.max()) if w.size else 0.0,
                                "dtype": scheme.weights.dtype}
            stats["weights"] = stats.get("weights", 0) + 1
        deq = cache[key]
        node.inputs[1] = deq
        if node.op in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2 and scheme.bias_int32:
            self._bias(graph, node, deq, w.shape)

    def _bias(self, graph: gs.Graph, node: gs.Node, wdeq: gs.Variable, wshape: Iterable[int]) -> None:
        """int32 bias, scale = input scale x weight scale, zero point 0, + DequantizeLinear."""
        ctx, namer, stats, opset = self.ctx, self.namer, self.stats, self.opset
        where = f"{node.op} '{node.name}'"
        b_t = node.inputs[2]
        b = constant_value(b_t)
        x_params = self.dq.get(id(node.inputs[0]))
        if b is None or b_t.name == "" or x_params is None:
            ctx.decline(self.pass_name, where, "bias is not a constant or the input is not quantized: bias kept float")
            return
        if node.op == "Gemm" and (node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0):
            ctx.decline(self.pass_name, where, "Gemm with alpha/beta != 1: bias kept float")
            return
        w_scale, axis = self.dq[id(wdeq)]
        b = np.asarray(b, dtype=np.float64)
        wshape = list(wshape)
        n_out = wshape[0] if node.op == "Conv" else (wshape[1] * int(node.attrs.get("group", 1))
                                                   if node.op == "ConvTranspose" else b.shape[-1] if b.ndim else 0)
        if b.ndim != 1 or b.shape[0] != n_out:
            ctx.decline(self.pass_name, where,
                        "bias is not a 1-D constant of the output-channel count: bias kept float")
            return
        ws = np.asarray(w_scale, dtype=np.float64)
        if node.op == "ConvTranspose" and ws.size > 1:
            ws = np.tile(ws, int(node.attrs.get("group", 1)))
        scale = np.asarray(x_params[0] * ws, dtype=np.float32)
        if scale.size > 1 and opset < 13:
            return
        safe = np.where(scale > 0, scale, 1.0).astype(np.float64)
        qb = np.clip(np.round(b / safe), -(2**31), 2**31 - 1).astype(np.int32)
        attrs = {"axis": 0} if scale.size > 1 else {}
        deq = gs.Variable(namer(f"{b_t.name}_dequantized"), dtype=np.float32, shape=[n_out])
        graph.nodes.append(gs.Node(
            "DequantizeLinear", namer(f"{b_t.name}_DequantizeLinear"), attrs=attrs,
            inputs=[gs.Constant(namer(f"{b_t.name}_quantized"), qb), gs.Constant(namer(f"{b_t.name}_scale"), scale),
                    gs.Constant(namer(f"{b_t.name}_zero_point"), np.zeros(scale.shape, dtype=np.int32))],
            outputs=[deq]))
        node.inputs[2] = deq
        stats["biases"] = stats.get("biases", 0) + 1
