"""arm outputs of zoo and real models: lint-clean, full check, load in onnxruntime, cosine >= 0.98."""

from __future__ import annotations

import numpy as np
import pytest

from tests.targets.test_x86 import REAL, ZOO, target_case


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_arm_zoo(name):
    target_case("arm", name)


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", REAL)
def test_arm_real(name):
    target_case("arm", name)


def test_arm_s8s8_per_channel_zero_point_zero():
    from onnxopt.targets.qdq_lint import iter_views, weighted_inputs

    out = target_case("arm", "small_cnn")
    groups = [wi for v in iter_views(out) for n in v.nodes
              if (wi := weighted_inputs(n, v)) is not None and wi.weight_dq is not None]
    assert groups
    for wi in groups:
        assert wi.data_dq.dtype == "int8" and wi.weight_dq.dtype == "int8"
        assert wi.weight_dq.zero_point is None or not np.any(wi.weight_dq.zero_point)


def test_arm_without_calibration():
    target_case("arm", "small_cnn", calibrated=False, expect="float")
