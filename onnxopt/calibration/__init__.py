"""Calibration: stream samples through a model and fold chosen tensors into per-tensor statistics.

It knows nothing of quantization: it reports ranges and thresholds; the quantizer turns them into scales.
"""

from onnxopt.calibration.calibrate import calibrate, calibrate_many, calibration_tensors
from onnxopt.calibration.collectors import (
    METHODS,
    Collector,
    Entropy,
    MinMax,
    Mse,
    Percentile,
    RunningStats,
    TensorRange,
    make_collector,
)
from onnxopt.calibration.data import CalibrationData, input_specs_of, open_calibration_data
from onnxopt.calibration.entropy import StreamingHistogram

__all__ = [
    "METHODS",
    "CalibrationData",
    "Collector",
    "Entropy",
    "MinMax",
    "Mse",
    "Percentile",
    "RunningStats",
    "StreamingHistogram",
    "TensorRange",
    "calibrate",
    "calibrate_many",
    "calibration_tensors",
    "input_specs_of",
    "make_collector",
    "open_calibration_data",
]
