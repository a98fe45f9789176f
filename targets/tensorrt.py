"""tensorrt: explicit quantization (Q/DQ) that TensorRT's ONNX parser imports and fuses; optional fp16.

Scheme: symmetric int8 with zero point 0 for activations (per tensor, [-128, 127]) and weights (per output
channel, narrow range [-127, 127]); Q/DQ on the inputs and weights of weighted ops and not on their outputs; on a
residual Add only the skip input carries Q/DQ; Concat inputs share one scale; LayerNormalization and Softmax stay
in higher precision; opset >= 13; no QOperator or integer ops. Every rule, with its source, is listed in
``tensorrt_lint``.

Lowering (after the quantizer; each rewrite is sound on any Q/DQ graph, it only removes quantization or
coarsens a scale):

- ``TrtRemoveOutputQdq``: a Q/DQ pair on a weighted op's output is bypassed for every reader that is not a
  weighted op's data input (residual Adds included: the conv branch goes float, the skip keeps its Q/DQ), except
  on a residual Add whose two inputs both come from weighted ops (a ResNet downsample block: main-branch Conv and
  1x1 shortcut Conv): there the shortcut (``residual_shortcut``: the shorter path from the two convs' lowest
  common ancestor) keeps its Q/DQ so that the main-branch Conv fuses with the Add;
- ``TrtKeepHighPrecision``: Q/DQ pairs around LayerNormalization and Softmax are bypassed;
- ``TrtShareConcatScale``: the Q/DQ pairs feeding one Concat get the largest of their scales;
- ``TrtNarrowWeights``: int8 weights at -128 become -127;
- ``ConvertFloatToFp16`` (``--fp16``, see ``tensorrt_fp16``): what stays float becomes fp16, Q/DQ scales stay
  float32, with Casts at the network interface and around each Q/DQ.

Not sound after the fact, so left to the scheme (the lint reports them): non-zero zero points, uint8 Q/DQ.

Without calibration data: canonicalization, then fp16 if asked; nothing is quantized.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.ir import Model, constant_value, iter_graphs, producer
from onnxopt.pass_manager import FixedPoint, Pass, PassContext, PassResult, register_pass
from onnxopt.quant_scheme import QuantScheme, TensorQuant

from . import tensorrt_lint
from .base import Target, Violation
from .cost_model import TENSORRT
from .precision_policy import TensorRTPolicy
from .tensorrt_fp16 import ConvertFloatToFp16
from .tensorrt_residual import residual_shortcut

log = logging.getLogger(__name__)

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
NO_CALIBRATION = "tensorrt without calibration data: canonicalization (and fp16 with --fp16) only, no int8"


def _float_behind(dq: gs.Node) -> gs.Tensor | None:
    """The float tensor a DequantizeLinear's Q read (DQ <- Q <- float), else None."""
    q = producer(dq.inputs[0])
    return q.inputs[0] if q is not None and q.op == "QuantizeLinear" else None


def _rewire(reader: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    for i, t in enumerate(reader.inputs):
        if t is old:
            reader.inputs[i] = new


def _detach_output(dq: gs.Node, graph: gs.Graph, new: gs.Tensor) -> None:
    """A DQ output that is a graph output becomes Identity(new) so the output keeps its name."""
    out = dq.outputs[0]
    dq.outputs[0] = gs.Variable(out.name + "_dq_unused", dtype=out.dtype, shape=out.shape)
    graph.nodes.append(gs.Node("Identity", name=out.name + "_float", inputs=[new], outputs=[out]))


@register_pass
class TrtRemoveOutputQdq(Pass):
    """Bypass Q/DQ on weighted-op outputs for readers that are not weighted-op data inputs (TensorRT), except on the
    shortcut input of a residual Add whose both inputs are weighted-op outputs (see ``residual_shortcut``)."""

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        count = 0
        for graph in list(iter_graphs(model.graph)):
            keep: set[tuple[int, int]] = set()  # (id(Add), id(its shortcut input)) whose Q/DQ stays
            for add in [n for n in graph.nodes if n.op == "Add"]:
                s = residual_shortcut(add)
                if s is not None:
                    keep.add((id(add), id(add.inputs[s])))
            for q in [n for n in graph.nodes if n.op == "QuantizeLinear"]:
                src = producer(q.inputs[0])
                if src is None or src.op not in WEIGHTED:
                    continue
                for dq in [n for n in q.outputs[0].outputs if n.op == "DequantizeLinear"]:
                    out = dq.outputs[0]
                    for reader in list(out.outputs):
                        if reader.op in WEIGHTED and reader.inputs and reader.inputs[0] is out:
                            continue
                        if (id(reader), id(out)) in keep:
                            continue
                        _rewire(reader, out, q.inputs[0])
                        count += 1
                    if any(t is out for t in graph.outputs):
                        _detach_output(dq, graph, q.inputs[0])
                        count += 1
            if count:
                graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(bool(count), {"bypassed": count} if count else {})


@register_pass
class TrtKeepHighPrecision(Pass):
    """Bypass Q/DQ pairs on the inputs and outputs of LayerNormalization and Softmax (TensorRT)."""

    lossless = False
    ops = ("LayerNormalization", "Softmax")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        count = 0
        for graph in list(iter_graphs(model.graph)):
            for node in [n for n in graph.nodes if n.op in self.ops]:
                dq = producer(node.inputs[0])
                if dq is not None and dq.op == "DequantizeLinear":
                    src = _float_behind(dq)
                    if src is None:
                        ctx.decline(self.name, f"{node.op} '{node.name}'", "its DequantizeLinear has no Q to skip")
                    else:
                        _rewire(node, dq.outputs[0], src)
                        count += 1
                out = node.outputs[0]
                for q in [n for n in out.outputs if n.op == "QuantizeLinear"]:
                    for dq2 in [n for n in q.outputs[0].outputs if n.op == "DequantizeLinear"]:
                        for reader in list(dq2.outputs[0].outputs):
                            _rewire(reader, dq2.outputs[0], out)
                            count += 1
                        if any(t is dq2.outputs[0] for t in graph.outputs):
                            _detach_output(dq2, graph, out)
            if count:
                graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(bool(count), {"bypassed": count} if count else {})


@register_pass
class TrtShareConcatScale(Pass):
    """Give the Q/DQ pairs feeding one Concat the largest of their scales (TensorRT)."""

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        count = 0
        for graph in list(iter_graphs(model.graph)):
            for node in [n for n in graph.nodes if n.op == "Concat"]:
                pairs = []
                for t in node.inputs:
                    dq = producer(t)
                    q = producer(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
                    if q is None or q.op != "QuantizeLinear":
                        continue
                    scale = constant_value(q.inputs[1])
                    readers_ok = all(n.op == "DequantizeLinear" for n in q.outputs[0].outputs)
                    if scale is None or scale.size != 1 or not readers_ok:
                        ctx.decline(self.name, f"Concat '{node.name}'", "an input's Q has a non-constant or "
                                    "per-channel scale, or readers other than DequantizeLinear")
                        pairs = []
                        break
                    pairs.append((q, float(scale.reshape(-1)[0])))
                scales = [s for _, s in pairs]
                if len(pairs) < 2 or np.allclose(scales, scales[0], rtol=1e-6, atol=0):
                    continue
                shared = np.asarray(max(scales), dtype=np.float32)
                for i, (q, _) in enumerate(pairs):
                    const = gs.Constant(f"{node.name}_shared_scale_{i}", shared.copy())
                    q.inputs[1] = const
                    for dq in q.outputs[0].outputs:
                        dq.inputs[1] = const
                count += 1
        return PassResult(bool(count), {"concats": count} if count else {})


@register_pass
class TrtNarrowWeights(Pass):
    """Clip int8 weights behind weighted-op DequantizeLinear from -128 to -127 (TensorRT's narrow range)."""

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        count = 0
        for graph in iter_graphs(model.graph):
            for node in [n for n in graph.nodes if n.op in WEIGHTED and len(n.inputs) > 1]:
                dq = producer(node.inputs[1])
                if dq is None or dq.op != "DequantizeLinear":
                    continue
                w = constant_value(dq.inputs[0])
                if w is None or w.dtype != np.int8 or not (w == -128).any():
                    continue
                dq.inputs[0] = gs.Constant(dq.inputs[0].name + "_narrow", np.maximum(w, -127).astype(np.int8))
                count += 1
        return PassResult(bool(count), {"weights": count} if count else {})


class TensorRT(Target):
    name = "tensorrt"
    description = "explicit int8 Q/DQ for TensorRT (symmetric, zero point 0, Q/DQ on weighted-op inputs); --fp16"
    min_opset = 13
    scheme = QuantScheme(
        activations=TensorQuant(dtype="int8", symmetric=True),
        weights=TensorQuant(dtype="int8", symmetric=True, per_channel=True, narrow_range=True),
        op_types=frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool",
                            "GlobalAveragePool", "Concat"}),
        # transformer residual Adds: measured on minilm, Q/DQ on them drops cosine to 0.93 (precision_policy.py)
        keep_float=frozenset({"Softmax", "LayerNormalization", "Erf", "Gelu"}),
        residual_skip_only=True,
        share_concat_scale=True,
        quantize_outputs=False,
        bias_int32=False,  # TensorRT's DequantizeLinear takes int8 (fp8/int4) only; it quantizes bias itself
        min_opset=13,
    )
    no_calibration = NO_CALIBRATION
    cost_model = TENSORRT

    def build_command(self, model_path: str) -> str | None:
        return trtexec_command(model_path)

    def precision_policy(self, options: dict[str, Any]) -> TensorRTPolicy:
        """Static Q/DQ only (TensorRT imports no dynamic ops), the residual rule, transformer Adds float."""
        return TensorRTPolicy(self.name, self.scheme, options.get("quantize") or "auto", options,
                              cost=self.cost_model)

    def lowering(self, options: dict[str, Any]) -> list[Pass | FixedPoint]:
        steps: list[Pass | FixedPoint] = [TrtRemoveOutputQdq(), TrtKeepHighPrecision(), TrtShareConcatScale(),
                                          TrtNarrowWeights()]
        if options.get("fp16"):
            steps.append(ConvertFloatToFp16())
        return steps

    def lint(self, model: onnx.ModelProto) -> list[Violation]:
        return tensorrt_lint.lint(model)


def trtexec_command(model_path: str | Path, shapes: str | None = None) -> str:
    """The ``trtexec`` line that builds (and times) an engine from our output.

    TensorRT's guide ("Explicit Quantization"): use explicit quantization with strong typing; precision-control
    build flags (``--int8``, ``--fp16``) are not required and should not be given, so the Q/DQ nodes and the
    ONNX types decide every layer's precision (run ``optimize --fp16`` to make the float part fp16).
    ``shapes`` (``input:1x3x224x224,...``) fixes dynamic dimensions for the build.
    """
    path = Path(model_path)
    parts = ["trtexec", f"--onnx={path}", f"--saveEngine={path.with_suffix('.engine')}", "--stronglyTyped"]
    if shapes:
        parts.append(f"--shapes={shapes}")
    parts += ["--dumpLayerInfo", "--profilingVerbosity=detailed"]
    return " ".join(shlex.quote(p) for p in parts)


__all__ = ["TensorRT", "TrtKeepHighPrecision", "TrtNarrowWeights", "TrtRemoveOutputQdq", "TrtShareConcatScale",
           "ConvertFloatToFp16", "residual_shortcut", "trtexec_command"]
