"""Models over 2 GB, end to end: `onnxopt optimize` on an MLP whose weights live in external data.

Builds LAYERS x (DIM x DIM float32 MatMul + Add + Relu) (default 40 x 4096: 2.5 GiB) in a temporary folder,
layer by layer straight into the external-data file (the weights are never held whole), then runs
``onnxopt optimize --quantize none`` and ``--quantize dynamic`` each in its own subprocess and prints the wall
time and the peak RSS of that subprocess (``os.wait4``'s ru_maxrss) divided by the model's size.

Goals (the exit status is non-zero when one is missed): every mode exits 0, writes an output with external data,
verifies, and peaks at most ``--max-rss`` (default 1.5) times the model's size.

    python3 bench/large_model.py                      # the 2.5 GiB model (needs ~4 GB RAM, ~8 GB disk)
    python3 bench/large_model.py --layers 8 --dim 1024 --threshold-mb 16  # the same path on 32 MiB (the RSS goal
                                                                          # cannot hold there: Python alone is 150 MB)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 4096


def _external(name: str, shape: list[int], f, data_name: str) -> TensorProto:
    """A float32 initializer of ``shape`` whose bytes are the next ones written to ``f`` (page aligned)."""
    pad = -f.tell() % ALIGN
    f.write(b"\0" * pad)
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", data_name), ("offset", str(f.tell())),
                       ("length", str(int(np.prod(shape)) * 4))):
        t.external_data.add(key=key, value=value)
    return t


def build_mlp(path: Path, layers: int, dim: int, seed: int = 0) -> int:
    """Write the MLP to ``path`` (+ ``path.data``) one layer at a time; returns the weight bytes."""
    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    nodes, inits = [], []
    x = "x"
    with open(path.parent / data_name, "wb") as f:
        for i in range(layers):
            w = _external(f"w{i}", [dim, dim], f, data_name)
            (rng.standard_normal((dim, dim), dtype=np.float32) * np.float32(np.sqrt(2.0 / dim))).tofile(f)
            b = _external(f"b{i}", [dim], f, data_name)
            (rng.standard_normal(dim, dtype=np.float32) * np.float32(0.01)).tofile(f)
            inits += [w, b]
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"),
                      helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"add{i}"),
                      helper.make_node("Relu", [f"add{i}"], [f"h{i}" if i < layers - 1 else "y"], name=f"relu{i}")]
            x = f"h{i}"
        size = f.tell()
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dim])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return size


def _wait4(cmd: list[str], env: dict[str, str]) -> tuple[int, float, str, str]:
    """Run ``cmd``; (exit status, its own peak RSS in bytes, stdout, stderr) — ru_maxrss of that child alone."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, usage.ru_maxrss * 1024.0, out.read(), err.read()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--modes", nargs="*", default=["none", "dynamic"])
    ap.add_argument("--max-rss", type=float, default=1.5, help="goal: peak RSS / model size")
    ap.add_argument("--threshold-mb", type=float,
                    help="lower onnxopt's large-model threshold (ONNXOPT_EXTERNAL_THRESHOLD) to take the "
                         "large-model path on a small model")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.threshold_mb is not None:
        env["ONNXOPT_EXTERNAL_THRESHOLD"] = str(int(args.threshold_mb * 2**20))
    tmp = Path(tempfile.mkdtemp(prefix="onnxopt-large-"))
    failed = False
    try:
        start = time.perf_counter()
        size = build_mlp(tmp / "big.onnx", args.layers, args.dim)
        print(f"model: {args.layers} x {args.dim}x{args.dim} MatMul+Add+Relu, {size / 2**30:.2f} GiB external data, "
              f"built in {time.perf_counter() - start:.1f} s")
        print(f"{'mode':<9} {'rc':>3} {'wall_s':>8} {'peak_rss_GiB':>13} {'rss/size':>9} {'external':>9} "
              f"{'verified':>9}")
        for mode in args.modes:
            out, report = tmp / f"out_{mode}.onnx", tmp / f"report_{mode}.json"
            cmd = [sys.executable, "-m", "onnxopt.cli", "optimize", str(tmp / "big.onnx"), "-o", str(out),
                   "--quantize", mode, "--report", str(report)]
            start = time.perf_counter()
            rc, rss, _, stderr = _wait4(cmd, env)
            wall = time.perf_counter() - start
            data = tmp / (out.name + ".data")
            verified = json.loads(report.read_text()).get("verify", {}).get("ok") if report.is_file() else None
            ratio = rss / size
            ok = rc == 0 and data.is_file() and verified is True and ratio <= args.max_rss
            failed |= not ok
            print(f"{mode:<9} {rc:>3} {wall:>8.1f} {rss / 2**30:>13.2f} {ratio:>9.2f} {str(data.is_file()):>9} "
                  f"{str(verified):>9}{'' if ok else '  MISSED'}")
            if rc != 0:
                print("  " + "\n  ".join(stderr.strip().splitlines()[-4:]))
            for p in (out, data, report):
                p.unlink(missing_ok=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
