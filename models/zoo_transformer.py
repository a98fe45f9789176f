"""BERT-like encoder written the way torch.onnx.export writes a HuggingFace BertModel.

Two LayerNorm forms: the fused LayerNormalization op (opset >= 17 exports) and the decomposed
ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add chain (opset <= 16 exports), which quantizers must recognise
and keep in float.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from .zoo_misc import GraphBuilder, tensor


def _normal(b: GraphBuilder, shape: tuple[int, ...], std: float = 0.02) -> np.ndarray:
    """BERT's initializer: N(0, 0.02)."""
    return (b.rng.standard_normal(shape) * std).astype(np.float32)


def _layer_norm(b: GraphBuilder, x: str, hidden: int, decomposed: bool, opset: int, eps: float = 1e-12) -> str:
    gamma = b.const((1.0 + 0.05 * b.rng.standard_normal(hidden)).astype(np.float32), "ln.weight")
    beta = b.const(_normal(b, (hidden,)), "ln.bias")
    if not decomposed:
        return b.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps)

    def mean(t: str) -> str:  # ReduceMean's axes moved from attribute to input at opset 18
        if opset >= 18:
            return b.op("ReduceMean", [t, b.i64([-1], "axes")], keepdims=1)
        return b.op("ReduceMean", [t], axes=[-1], keepdims=1)

    centered = b.op("Sub", [x, mean(x)])
    var = mean(b.op("Pow", [centered, b.f32(2.0, "two")]))
    std = b.op("Sqrt", [b.op("Add", [var, b.f32(eps, "eps")])])
    return b.op("Add", [b.op("Mul", [b.op("Div", [centered, std]), gamma]), beta])


def _linear(b: GraphBuilder, x: str, cin: int, cout: int) -> str:
    """nn.Linear as exported: MatMul with the transposed weight, then Add of the bias."""
    return b.op("Add", [b.op("MatMul", [x, b.const(_normal(b, (cin, cout)), "linear.weight")]),
                        b.const(_normal(b, (cout,)), "linear.bias")])


def _gelu(b: GraphBuilder, x: str) -> str:
    """Exact GELU as exported: x * 0.5 * (1 + erf(x / sqrt(2))) -> Div, Erf, Add, Mul, Mul."""
    e = b.op("Erf", [b.op("Div", [x, b.f32(math.sqrt(2.0), "sqrt2")])])
    return b.op("Mul", [b.op("Mul", [x, b.op("Add", [e, b.f32(1.0, "one")])]), b.f32(0.5, "half")])


def _attention(b: GraphBuilder, x: str, mask: str, hidden: int, heads: int) -> str:
    d = hidden // heads
    split = b.i64([0, 0, heads, d], "split_heads")

    def project(perm: list[int]) -> str:
        return b.op("Transpose", [b.op("Reshape", [_linear(b, x, hidden, hidden), split])], perm=perm)

    q, k, v = project([0, 2, 1, 3]), project([0, 2, 3, 1]), project([0, 2, 1, 3])
    scores = b.op("Div", [b.op("MatMul", [q, k]), b.f32(math.sqrt(d), "sqrt_d")])
    probs = b.op("Softmax", [b.op("Add", [scores, mask])], axis=-1)
    ctx = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, b.i64([0, 0, hidden], "merge_heads")])
    return _linear(b, ctx, hidden, hidden)


def bert(layers: int = 4, hidden: int = 256, heads: int = 4, seq: int = 128, vocab: int = 1000,
         decomposed_layernorm: bool = False, opset: int | None = None, seed: int = 0) -> onnx.ModelProto:
    """BERT encoder: `input_ids`, `attention_mask` int64 [batch, sequence] -> `last_hidden_state`
    [batch, sequence, hidden].

    `seq` is the number of position embeddings (the longest sequence the model accepts). The opset defaults to
    17 (fused LayerNormalization) or 13 when `decomposed_layernorm` (as older exports look). The vocabulary size
    and maximum sequence are recorded in metadata_props so `sample_inputs` stays within range.
    """
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
    opset = opset or (13 if decomposed_layernorm else 17)
    if not decomposed_layernorm and opset < 17:
        raise ValueError("LayerNormalization needs opset >= 17; pass decomposed_layernorm=True for older opsets")
    b = GraphBuilder(seed)
    ids, mask_in = "input_ids", "attention_mask"

    # Embeddings: word + position (position_ids sliced to the sequence length, as BertEmbeddings exports).
    word = b.op("Gather", [b.const(_normal(b, (vocab, hidden)), "word_embeddings"), ids], axis=0)
    seq_len = b.op("Gather", [b.op("Shape", [ids]), b.i64([1], "idx")], axis=0)
    pos_ids = b.op("Slice", [b.const(np.arange(seq, dtype=np.int64)[None, :], "position_ids"), b.i64([0], "start"),
                             seq_len, b.i64([1], "axes")])
    pos = b.op("Gather", [b.const(_normal(b, (seq, hidden)), "position_embeddings"), pos_ids], axis=0)
    x = _layer_norm(b, b.op("Add", [word, pos]), hidden, decomposed_layernorm, opset)

    # Extended mask: (1 - mask[:, None, None, :]) * -10000, added to the attention scores.
    m = b.op("Cast", [b.op("Unsqueeze", [mask_in, b.i64([1, 2], "axes")])], to=TensorProto.FLOAT)
    mask = b.op("Mul", [b.op("Sub", [b.f32(1.0, "one"), m]), b.f32(-10000.0, "neg")])

    for _ in range(layers):
        x = _layer_norm(b, b.op("Add", [_attention(b, x, mask, hidden, heads), x]), hidden, decomposed_layernorm,
                        opset)
        h = _linear(b, _gelu(b, _linear(b, x, hidden, 4 * hidden)), 4 * hidden, hidden)
        x = _layer_norm(b, b.op("Add", [h, x]), hidden, decomposed_layernorm, opset)
    b.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state"))
    name = "bert_decomposed" if decomposed_layernorm else "bert"
    dims = ["batch", "sequence"]
    return b.model(name, [tensor(ids, dims, TensorProto.INT64), tensor(mask_in, dims, TensorProto.INT64)],
                   [tensor("last_hidden_state", [*dims, hidden])], opset=opset,
                   metadata={"onnxopt.vocab_size": str(vocab), "onnxopt.max_sequence": str(seq)})
