"""DeduplicateInitializers: equal initializers merge (subgraphs too); different bytes, dtypes or graph inputs stay."""

import numpy as np
import onnx
from differential import apply_passes, assert_equivalent
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.passes.deduplicate_initializers import DeduplicateInitializers


def all_initializers(proto):
    found = []

    def walk(g):
        found.extend(t.name for t in g.initializer)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
    walk(proto.graph)
    return found


def model(nodes, inits, extra_inputs=(), outputs=("y",)):
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 3])
    g = h.make_graph(nodes, "g", [x, *extra_inputs], [h.make_tensor_value_info(o, T.FLOAT, [2, 3]) for o in outputs],
                     [nh.from_array(np.asarray(v), n) for n, v in inits])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_merges_equal_and_keeps_different():
    a = np.arange(3, dtype=np.float32)
    m = model([h.make_node("Add", ["x", "a"], ["p"]), h.make_node("Mul", ["p", "b"], ["q"]),
               h.make_node("Sub", ["q", "c"], ["r"]), h.make_node("Add", ["r", "d"], ["s"]),
               h.make_node("Add", ["s", "e"], ["y"])],
              [("a", a), ("b", a.copy()), ("c", a + 1), ("d", np.array([0.0, 1, 2], np.float32) * -0.0 + a),
               ("e", np.zeros(3, np.float32) - 0.0 * -1)])
    m.graph.initializer[4].CopyFrom(nh.from_array(np.array([-0.0, -0.0, -0.0], np.float32), "e"))
    out, report = apply_passes(m, [DeduplicateInitializers()])
    assert_equivalent(m, out)
    names = all_initializers(out)
    assert "b" not in names and "a" in names and "c" in names and "e" in names
    assert [n.input[1] for n in out.graph.node][:2] == ["a", "a"]


def test_dtype_matters():
    m = model([h.make_node("Cast", ["i"], ["ic"], to=T.FLOAT), h.make_node("Add", ["x", "ic"], ["p"]),
               h.make_node("Add", ["p", "f"], ["y"])],
              [("i", np.zeros(3, np.int32)), ("f", np.zeros(3, np.float32))])
    out, _ = apply_passes(m, [DeduplicateInitializers()])
    assert sorted(all_initializers(out)) == ["f", "i"]


def test_inside_if_subgraph():
    a = np.arange(3, dtype=np.float32)
    then_g = h.make_graph([h.make_node("Add", ["x", "s1"], ["t0"]), h.make_node("Mul", ["t0", "s2"], ["t"])],
                          "then", [], [h.make_tensor_value_info("t", T.FLOAT, [2, 3])],
                          [nh.from_array(a, "s1"), nh.from_array(a.copy(), "s2")])
    else_g = h.make_graph([h.make_node("Sub", ["x", "s3"], ["e"])], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, [2, 3])], [nh.from_array(a.copy(), "s3")])
    m = model([h.make_node("Add", ["x", "a"], ["z"]), h.make_node("If", ["cond"], ["w"], then_branch=then_g,
                                                                 else_branch=else_g),
               h.make_node("Add", ["z", "w"], ["y"])], [("a", a)],
              extra_inputs=[h.make_tensor_value_info("cond", T.BOOL, [])])
    out, _ = apply_passes(m, [DeduplicateInitializers()])
    names = all_initializers(out)
    assert not {"s1", "s2", "s3"} & set(names)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    for cond in (True, False):
        assert_equivalent(m, out, {"x": x, "cond": np.array(cond)})


def test_large_tensors_equal_on_sampled_elements_merge_only_when_all_bytes_match():
    # 1000 elements: fingerprints sample 64 of them, so these four share a fingerprint; only a and b are equal
    base = np.zeros((10, 100), np.float32)
    a, b, c, d = base.copy(), base.copy(), base.copy(), base.copy()
    a[3, 7] = b[3, 7] = 1.0  # not a sampled element
    c[3, 7] = 2.0
    d[3, 7] = -0.0  # byte-different from c and from zeros, but equal in value to 0
    inits = [("a", a), ("b", b), ("c", c), ("d", d), ("z", base)]
    names = [n for n, _ in inits]
    x = h.make_tensor_value_info("x", T.FLOAT, [10, 100])
    nodes, prev = [], "x"
    for i, n in enumerate(names):
        nodes.append(h.make_node("Add", [prev, n], [f"s{i}"]))
        prev = f"s{i}"
    nodes.append(h.make_node("Identity", [prev], ["y"]))
    g = h.make_graph(nodes, "g", [x], [h.make_tensor_value_info("y", T.FLOAT, [10, 100])],
                     [nh.from_array(v, n) for n, v in inits])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    out, report = apply_passes(m, [DeduplicateInitializers()])
    assert_equivalent(m, out)
    assert sorted(all_initializers(out)) == ["a", "c", "d", "z"]
    assert report["passes"][0]["stats"]["initializers_merged"] == 1
