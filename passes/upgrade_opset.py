"""UpgradeOpset: bring the default-domain opset up to a requested minimum with onnx's version converter."""

from __future__ import annotations

import logging
import re

import onnx
from onnx import version_converter

from onnxopt.errors import UserError
from onnxopt.ir import DEFAULT_DOMAINS, Model
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass

log = logging.getLogger(__name__)

_OP_PATTERNS = (
    re.compile(r"No Adapter (?:From|To) Version \$?\d+ for (\w+)"),
    re.compile(r"adapt_([A-Za-z]+)_\d+_\d+"),
    re.compile(r"op_type:(\w+)"),
)
_STRIP_ABOVE = 1 << 20  # bytes: larger initializers do not travel through the converter


def _blocking_op(message: str) -> str | None:
    for pat in _OP_PATTERNS:
        m = pat.search(message)
        if m:
            return m.group(1)
    return None


def _strip_large_initializers(proto: onnx.ModelProto) -> dict[str, bytes]:
    """Move the raw bytes of large top-level initializers aside so the converter does not copy them."""
    kept: dict[str, bytes] = {}
    for t in proto.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) > _STRIP_ABOVE and t.data_location != onnx.TensorProto.EXTERNAL:
            kept[t.name] = t.raw_data
            t.ClearField("raw_data")
    return kept


def _restore_initializers(proto: onnx.ModelProto, kept: dict[str, bytes]) -> None:
    for t in proto.graph.initializer:
        if t.name in kept:
            t.raw_data = kept.pop(t.name)
    if kept:  # the converter dropped or renamed one: never silently lose weights
        raise RuntimeError(f"the converter lost initializers {sorted(kept)[:3]}")


@register_pass
class UpgradeOpset(Pass):
    """Upgrade the default-domain opset to ctx.option("min_opset", 13) with onnx.version_converter.

    Rewrites: the whole graph (subgraphs included) is converted by onnx's version converter; other
    domains' opset imports are kept as they are. Large initializers are set aside while converting and put
    back by name afterwards, so the converter never serializes the weights.
    Declines: a model already at or above the requested opset is left alone (it never downgrades).
    Errors: when the converter cannot reach the opset, a UserError names the op that blocked it; with
    ``required=False`` (an opset a later pass would like, e.g. 25 for int2 weights) that is a decline instead.
    ``opset``: the opset to reach (default ``ctx.option("min_opset", 13)``).
    """

    lossless = True

    def __init__(self, opset: int | None = None, required: bool = True) -> None:
        self.opset = opset
        self.required = required

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        target = int(self.opset if self.opset is not None else ctx.option("min_opset", 13))
        current = model.opset
        if current >= target:
            ctx.decline(self.name, "model", f"opset {current} already >= {target}; never downgrades")
            return PassResult(False)
        proto = model.to_onnx()
        other = [(o.domain, o.version) for o in proto.opset_import if o.domain not in DEFAULT_DOMAINS]
        kept = _strip_large_initializers(proto)
        try:
            converted = version_converter.convert_version(proto, target)
        except Exception as e:  # the converter raises RuntimeError / InferenceError / ValidationError
            msg = str(e).replace("\n", " ")
            op = _blocking_op(msg)
            what = f"the converter has no adapter for {op}" if op else f"the converter failed ({msg[:200]})"
            if not self.required:
                ctx.decline(self.name, "model", f"cannot upgrade opset {current} -> {target}: {what}")
                return PassResult(False)
            raise UserError(f"cannot upgrade opset {current} -> {target}: {what}; "
                            f"export the model at opset >= {target}") from None
        _restore_initializers(converted, kept)
        present = {o.domain for o in converted.opset_import}
        for domain, version in other:
            if domain not in present:
                converted.opset_import.add(domain=domain, version=version)
        model.replace_with(converted)
        log.info("upgraded opset %d -> %d", current, target)
        return PassResult(True, {"opset_from": current, "opset_to": target})
