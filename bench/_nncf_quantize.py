"""Run inside NNCF's own virtual environment (bench/recover.py calls it): nncf.quantize with its defaults
(mixed preset, FastBiasCorrection on) on an ONNX model and calibration feeds, then save the result.

    /tmp/nncf-venv/bin/python bench/_nncf_quantize.py in.onnx calib.npz out.onnx

``calib.npz`` holds feed ``i``'s input ``name`` under the key ``"{i}/{name}"``. Prints the seconds nncf.quantize took.
"""

from __future__ import annotations

import sys
import time

import nncf
import numpy as np
import onnx


def main(src: str, calib: str, dst: str) -> None:
    model = onnx.load(src)
    with np.load(calib) as z:
        feeds: dict[int, dict[str, np.ndarray]] = {}
        for key in z.files:
            i, name = key.split("/", 1)
            feeds.setdefault(int(i), {})[name] = z[key]
    data = [feeds[i] for i in sorted(feeds)]
    start = time.perf_counter()
    out = nncf.quantize(model, nncf.Dataset(data), subset_size=len(data))
    print(f"{time.perf_counter() - start:.3f}")
    onnx.save(out, dst)


if __name__ == "__main__":
    main(*sys.argv[1:4])
