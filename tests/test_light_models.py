"""ONNX's nine light models (opset 9, weights from ConstantOfShape, initializers listed as inputs): after the
canonicalize pipeline each reproduces its reference output, has no ConstantOfShape, Dropout or
BatchNormalization left, and has fewer nodes."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from differential import apply_passes, op_types
from onnx import numpy_helper

from onnxopt.passes.canonicalize import canonicalize
from onnxopt.verify import run_model

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
NAMES = sorted(p.stem[len("light_"):] for p in LIGHT.glob("light_*.onnx"))
SLOW = {"vgg19", "zfnet512", "bvlc_alexnet", "densenet121", "resnet50"}  # large Gemm weights or many nodes


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The inputs onnx's backend runner uses for these models: arange(n) / n in the input's shape."""
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def test_all_nine_are_found():
    assert len(NAMES) == 9, NAMES


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NAMES])
def test_light_model(name):
    before = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    reference = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"light_{name}_output_0.pb")))
    after, report = apply_passes(before, canonicalize())
    assert next(o.version for o in after.opset_import if o.domain == "") >= 13
    got = list(run_model(after, _feeds(before), optimize=True).values())
    assert len(got) == 1
    np.testing.assert_allclose(got[0], reference, rtol=1e-3, atol=1e-4)
    left = {"ConstantOfShape", "Dropout", "BatchNormalization"} & set(op_types(after))
    assert not left, f"{name}: {sorted(left)} left after canonicalize"
    assert len(after.graph.node) < len(before.graph.node)
    assert report["converged"]
