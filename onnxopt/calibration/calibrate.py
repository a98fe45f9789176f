"""Stream calibration samples through a model once and fold chosen tensors into per-tensor statistics.

``calibrate(model, data, tensors, method, engine)`` -> ``{tensor name: TensorRange}``;
``calibrate_many(model, data, tensors, methods, engine)`` -> ``{method: {tensor name: TensorRange}}`` from
one pass (one histogram per tensor serves every histogram method).

Engines:

- ``"onnxruntime"`` (``ort_engine``): a copy of the model (saved to a temporary file with external data when
  it is too large to serialise in memory) runs the samples one at a time: the requested tensors become extra
  outputs, each folded into its statistics and dropped. With ``ort_engine.GRAPH_REDUCTIONS`` (off by
  default, see there) and no histogram method, float tensors get ReduceMin/ReduceMax/ReduceL1 nodes instead
  and only those values are fetched; same statistics. It cannot reach tensors inside If/Loop/Scan.
- ``"reference"``: the onnxopt interpreter, with its capture callback; it reaches subgraph tensors (inside
  Loop/Scan bodies every iteration is folded in).
- ``"auto"`` (default): onnxruntime when every requested tensor is in the main graph, else the interpreter;
  if the interpreter cannot load the model, onnxruntime for the main-graph tensors with a logged warning
  naming how many subgraph tensors are left out.

Default tensors (``tensors=None``): every floating-point tensor a node computes, in the main graph and in
subgraphs, plus the floating-point graph inputs; outputs of Constant nodes and initializers are left out
(they are weights). A tensor whose type is not known statically is included and kept only if its values
turn out floating-point. Explicitly requested initializers are folded in once, not once per sample.

Memory holds the statistics (a few counters and, for histogram methods, ``2 * bins`` counts per tensor) and
one sample's tensors at a time: it does not grow with the number of samples.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from onnxopt.calibration import ort_engine
from onnxopt.calibration.collectors import METHODS, RunningStats, TensorRange, derive, make_collector
from onnxopt.calibration.data import CalibrationData, input_specs_of, open_calibration_data
from onnxopt.errors import UserError
from onnxopt.model_io import subgraph_protos
from onnxopt.progress import progress_bar
from onnxopt.tensor_files import tensor_array

log = logging.getLogger(__name__)

__all__ = ["calibrate", "calibrate_many", "calibration_tensors"]

_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
}


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types: dict[str, int] = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


class _Inventory:
    """Where each tensor name lives and what type it has, from a shape-inferred copy of the model."""

    def __init__(self, model: onnx.ModelProto):
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:  # a model over 2 GB, or one shape inference rejects: types stay unknown
            log.info("shape inference failed (%s); tensor types are checked at run time", exc)
            inferred = model
        g = inferred.graph
        self.value_infos = {vi.name: vi for vi in [*g.input, *g.output, *g.value_info]}
        self.initializers = {init.name for init in model.graph.initializer}
        self.feeds = [vi.name for vi in model.graph.input if vi.name not in self.initializers]
        self.types: dict[str, int] = {}
        self.main: list[str] = list(self.feeds)
        self.sub: list[str] = []
        self.constant_outputs: set[str] = set()
        self.sub_initializers: set[str] = set()
        self._walk(g, main=True)

    def _walk(self, graph: onnx.GraphProto, main: bool) -> None:
        self.types.update(_elem_types(graph))
        if not main:
            self.sub_initializers.update(init.name for init in graph.initializer)
        for node in graph.node:
            for out in node.output:
                if out:
                    (self.main if main else self.sub).append(out)
                    if node.op_type == "Constant":
                        self.constant_outputs.add(out)
            for sub in subgraph_protos(node):
                self._walk(sub, main=False)

    def default_tensors(self) -> list[str]:
        seen: set[str] = set()
        out = []
        for name in [*self.main, *self.sub]:
            if name in seen or name in self.constant_outputs or name in self.sub_initializers:
                continue
            seen.add(name)
            t = self.types.get(name)
            if t is None or t in _FLOAT_TYPES:
                out.append(name)
        return out


def calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors ``calibrate`` takes when none are named (see the module docstring)."""
    return _Inventory(model).default_tensors()


def _progress(data: CalibrationData, progress: bool | None, desc: str):
    return progress_bar(data, desc, data.length, enabled=progress, unit="sample")  # drawn on a terminal only


class _Folder:
    """name -> RunningStats, created when a tensor's first array arrives."""

    def __init__(self, explicit: set[str], bins: int | None, averaging_constant: float | None,
                 channel_axis: int | Mapping[str, int] | None):
        self.explicit = explicit
        self.bins = bins
        self.averaging_constant = averaging_constant
        self.channel_axis = channel_axis
        self.stats: dict[str, RunningStats] = {}
        self.skipped: set[str] = set()

    def __call__(self, name: str, value: Any) -> None:
        st = self.stats.get(name)
        if st is None:
            if name in self.skipped:
                return
            arr = np.asarray(value)
            if arr.dtype.kind != "f" and name not in self.explicit:
                self.skipped.add(name)
                return
            st = self.stats[name] = RunningStats(
                histogram_bins=self.bins, averaging_constant=self.averaging_constant,
                channel_axis=self._axis(name, arr.ndim),
            )
        st.update(value)

    def reduced(self, name: str, ndim: int, size: int, mn: float, mx: float, sum_abs: float,
                channel_min: np.ndarray | None, channel_max: np.ndarray | None) -> None:
        """Fold one float array known by its reductions over finite values (see ``ort_engine``).

        Folds like ``RunningStats.update`` (same ``fold``/``fold_channels``), for an array without NaN/inf and
        without a histogram.
        """
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = RunningStats(
                averaging_constant=self.averaging_constant, channel_axis=self._axis(name, ndim)
            )
        st.updates += 1
        if size == 0:
            return
        st.fold(size, sum_abs, mn, mx)
        if st.channel_axis is None:
            return
        if channel_min is None or channel_max is None:
            raise RuntimeError(f"per-channel reductions of {name!r} were not computed")
        st.fold_channels(channel_min, channel_max)

    def _axis(self, name: str, ndim: int) -> int | None:
        axis = self.channel_axis.get(name) if isinstance(self.channel_axis, Mapping) else self.channel_axis
        return axis if axis is not None and -ndim <= axis < ndim else None


def _check_methods(methods: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> tuple[int | None, float | None]:
    bins: set[int] = set()
    averaging = None
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown calibration method {m!r}; choose one of {', '.join(METHODS)}")
        opts = dict(options.get(m, {}))
        try:
            make_collector(m, **opts)  # validates the options
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        if m == "minmax":
            averaging = opts.get("averaging_constant")
        else:
            bins.add(int(opts.get("bins", 2048)))
    if len(bins) > 1:
        raise UserError(f"histogram methods asked for different bin counts {sorted(bins)}; use one")
    return (bins.pop() if bins else None), averaging


def _run_reference(interp, names: list[str], data, fold: _Folder, progress) -> None:
    for feed in _progress(data, progress, "calibrating (interpreter)"):
        interp.run(feed, capture=names, callback=fold)


def calibrate_many(
    model: onnx.ModelProto,
    data: Any,
    tensors: Sequence[str] | None = None,
    methods: Sequence[str] = ("minmax", "entropy"),
    engine: str = "auto",
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    channel_axis: int | Mapping[str, int] | None = None,
    progress: bool | None = None,
    summary_bins: int | None = None,
) -> dict[str, dict[str, TensorRange]]:
    """One pass over ``data``; returns ``{method: {tensor: TensorRange}}`` for every method in ``methods``.

    ``data``: CalibrationData or anything ``open_calibration_data`` accepts (validated against the model's
    inputs). ``options``: per-method keyword options (e.g. ``{"percentile": {"percentile": 99.99}}``).
    ``channel_axis``: per-channel min/max along that axis (one int for all tensors of sufficient rank, or per
    tensor name). ``progress``: tqdm bar, shown only on a terminal (False: never). ``summary_bins``: keep a
    ``summary_bins``-bin histogram per tensor even when no method needs one, so that each TensorRange carries
    ``histogram`` (what reports draw; ``2 * summary_bins`` counters per tensor, whatever the samples).
    """
    options = dict(options or {})
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise UserError("no calibration method given; choose among " + ", ".join(METHODS))
    bins, averaging = _check_methods(methods, options)
    if bins is None and summary_bins:
        bins = int(summary_bins) + int(summary_bins) % 2  # StreamingHistogram takes an even count
    if engine not in ("onnxruntime", "reference", "auto"):
        raise UserError(f"unknown calibration engine {engine!r}; choose onnxruntime, reference or auto")
    if not isinstance(data, CalibrationData):
        data = open_calibration_data(data, input_specs_of(model))

    inv = _Inventory(model)
    explicit = tensors is not None
    names = list(dict.fromkeys(tensors)) if explicit else inv.default_tensors()
    known_main = set(inv.main) | inv.initializers
    known_sub = set(inv.sub) | inv.sub_initializers
    unknown = [n for n in names if n not in known_main and n not in known_sub]
    if unknown:
        raise UserError(f"tensor {unknown[0]!r} is not in the model ({len(unknown)} unknown name(s) asked)")
    fold = _Folder(set(names) if explicit else set(), bins, averaging, channel_axis)

    constants = [n for n in names if n in inv.initializers]
    names = [n for n in names if n not in inv.initializers]
    sub_only = [n for n in names if n not in known_main]

    interp = None
    if engine == "onnxruntime" and sub_only:
        raise UserError(
            f"tensor {sub_only[0]!r} lives inside an If/Loop/Scan subgraph, which onnxruntime cannot expose; "
            "use engine='reference' or 'auto'"
        )
    if engine == "reference" or (engine == "auto" and sub_only):
        try:
            from onnxopt.interp import Interpreter

            interp = Interpreter(model)
        except Exception as exc:
            if engine == "reference":
                raise UserError(f"the reference interpreter cannot run this model: {exc}") from exc
            log.warning(
                "the interpreter cannot run this model (%s): calibrating with onnxruntime, leaving out %d "
                "tensor(s) inside subgraphs", exc, len(sub_only),
            )
            names = [n for n in names if n in known_main]

    for name in constants:
        init = next(i for i in model.graph.initializer if i.name == name)
        fold(name, tensor_array(init))  # a large model's weight: read from its file
    if interp is not None:
        _run_reference(interp, names, data, fold, progress)
    else:
        ort_engine.run(model, inv.feeds, inv.value_infos, inv.types, names, data, fold,
                       lambda d: _progress(d, progress, "calibrating (onnxruntime)"), channel_axis, bins is not None)

    if explicit:
        missing = [n for n in names if n not in fold.stats]
        if missing:
            log.warning("%d requested tensor(s) were never produced (e.g. %r: a branch not taken?)",
                        len(missing), missing[0])
    result: dict[str, dict[str, TensorRange]] = {}
    for m in methods:
        opts = options.get(m, {})
        result[m] = {name: derive(st, m, **opts) for name, st in fold.stats.items()}
    return result


def calibrate(
    model: onnx.ModelProto,
    data: Any,
    tensors: Sequence[str] | None = None,
    method: str = "minmax",
    engine: str = "auto",
    *,
    channel_axis: int | Mapping[str, int] | None = None,
    progress: bool | None = None,
    summary_bins: int | None = None,
    **method_options: Any,
) -> dict[str, TensorRange]:
    """``{tensor: TensorRange}`` for one ``method`` ("minmax", "percentile", "entropy", "mse").

    ``method_options`` go to the method (``averaging_constant`` for minmax; ``percentile``, ``symmetric``,
    ``bins`` for percentile; ``bins``, ``levels``, ``start_bin`` for entropy; ``bins``, ``levels`` for mse).
    Each TensorRange also carries min, max, mean |x|, counts and, with ``channel_axis``, per-channel extremes.
    """
    return calibrate_many(
        model, data, tensors, [method], engine,
        options={method: method_options}, channel_axis=channel_axis, progress=progress, summary_bins=summary_bins,
    )[method]
