"""Calibration data: the four sources, validation errors, re-iteration and split."""

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxopt.calibration import CalibrationData, input_specs_of, open_calibration_data
from onnxopt.errors import UserError

SPECS = {"x": (np.dtype(np.float32), ("N", 3)), "ids": (np.dtype(np.int64), (None,))}


def _samples(n=5):
    rng = np.random.default_rng(1)
    return [
        {"x": rng.standard_normal((2, 3)).astype(np.float32), "ids": np.arange(i + 1, dtype=np.int64)}
        for i in range(n)
    ]


def _same(a, b):
    assert len(a) == len(b)
    for fa, fb in zip(a, b, strict=True):
        assert fa.keys() == fb.keys()
        for k in fa:
            assert fa[k].dtype == fb[k].dtype
            np.testing.assert_array_equal(fa[k], fb[k])


class Reader:
    def __init__(self, samples):
        self.it = iter(samples)

    def get_next(self):
        return next(self.it, None)


def test_input_specs_of_skips_initializers_and_keeps_dynamic_dims():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, None])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    init = helper.make_tensor("w", TensorProto.FLOAT, [3], [1, 2, 3])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x, w], [y], [init])
    specs = input_specs_of(helper.make_model(g))
    assert specs == {"x": (np.dtype(np.float32), ("batch", 3, None))}


def test_list_source_is_reiterable_with_len():
    s = _samples()
    data = open_calibration_data(s, SPECS)
    assert len(data) == 5
    _same(list(data), s)
    _same(list(data), s)


def test_generator_source_is_read_once():
    s = _samples()
    data = open_calibration_data((f for f in s), SPECS)
    assert data.length is None
    with pytest.raises(TypeError):
        len(data)
    _same(list(data), s)
    with pytest.raises(UserError, match="only once"):
        list(data)


def test_reader_source_is_read_once():
    s = _samples()
    data = open_calibration_data(Reader(s), SPECS)
    _same(list(data), s)
    with pytest.raises(UserError, match="already consumed"):
        list(data)


def test_onnxruntime_reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    class R(CalibrationDataReader):
        def __init__(self):
            self.it = iter(_samples(3))

        def get_next(self):
            return next(self.it, None)

    data = open_calibration_data(R(), SPECS)
    assert data.length is None  # its __len__ raises NotImplementedError
    assert len(list(data)) == 3


def test_npz_file_with_sample_axis(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    ids = np.arange(8, dtype=np.int64).reshape(4, 2)
    np.savez(tmp_path / "c.npz", x=x, ids=ids)
    data = open_calibration_data(tmp_path / "c.npz", SPECS)
    assert len(data) == 4
    got = list(data)
    _same(got, [{"x": x[i], "ids": ids[i]} for i in range(4)])
    _same(list(data), got)


def test_npz_float64_is_cast_with_one_warning(tmp_path, caplog):
    x = np.ones((3, 2, 3), dtype=np.float64)
    np.savez(tmp_path / "c.npz", x=x, ids=np.zeros((3, 1), dtype=np.int32))
    with caplog.at_level(logging.WARNING, logger="onnxopt.calibration.data"):
        got = list(open_calibration_data(str(tmp_path / "c.npz"), SPECS))
    assert all(f["x"].dtype == np.float32 and f["ids"].dtype == np.int64 for f in got)
    casts = [r for r in caplog.records if "casting" in r.getMessage()]
    assert len(casts) == 2  # once per input, not once per sample


def test_directory_sorted_by_name(tmp_path):
    s = _samples(3)
    for i, f in zip([2, 0, 1], s, strict=True):
        np.savez(tmp_path / f"s{i}.npz", **f)
    (tmp_path / "notes.txt").write_text("ignored")
    data = open_calibration_data(tmp_path, SPECS)
    assert len(data) == 3
    _same(list(data), [s[1], s[2], s[0]])


def test_mapping_of_stacked_arrays():
    data = open_calibration_data({"x": np.zeros((2, 1, 3), np.float32), "ids": np.zeros((2, 4), np.int64)}, SPECS)
    assert len(data) == 2 and list(data)[1]["ids"].shape == (4,)


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ({"ids": np.zeros(1, np.int64)}, r"sample 2 .*input 'x' is missing .*float32\[N,3\]"),
        ({"x": np.zeros((1, 3), np.float32), "ids": np.zeros(1, np.int64), "y": 1}, r"sample 2 .*unknown input 'y'"),
        ({"x": np.zeros((1, 3), np.int32), "ids": np.zeros(1, np.int64)}, r"sample 2 .*'x' has dtype int32, expected"),
        ({"x": np.zeros((1, 3), np.float32), "ids": np.zeros(1, np.float32)}, r"'ids' has dtype float32"),
        ({"x": np.zeros((1, 3), np.float32), "ids": np.array([2**40])}, r"'ids' has dtype int64"),
        ({"x": np.zeros((3,), np.float32), "ids": np.zeros(1, np.int64)}, r"sample 2 .*'x' has rank 1 .*rank 2"),
        ({"x": np.zeros((1, 4), np.float32), "ids": np.zeros(1, np.int64)}, r"shape \[1, 4\].*dim.* 1 must be 3"),
        ([1, 2], r"sample 2 .*expected a dict"),
    ],
)
def test_validation_errors_name_input_and_sample(bad, pattern):
    specs = dict(SPECS)
    if "'ids' has dtype int64" in pattern:  # an int64 value that does not fit an int32 input
        specs["ids"] = (np.dtype(np.int32), (None,))
    s = _samples(2) + [bad]
    if "'ids' has dtype int64" in pattern:
        s = [{"x": f["x"], "ids": f["ids"].astype(np.int32)} for f in s[:2]] + [bad]
    data = open_calibration_data(s, specs)
    it = iter(data)
    next(it)
    next(it)  # the first two samples are fine: validation is lazy, per sample
    with pytest.raises(UserError, match=pattern) as exc:
        next(it)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("factory", [list, lambda s: iter(s), Reader])
def test_empty_set(factory):
    with pytest.raises(UserError, match="empty"):
        list(open_calibration_data(factory([]), SPECS))


def test_empty_and_bad_paths(tmp_path):
    with pytest.raises(UserError, match="no .npz"):
        open_calibration_data(tmp_path, SPECS)
    with pytest.raises(UserError, match="does not exist"):
        open_calibration_data(tmp_path / "missing.npz", SPECS)
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 1, 3), np.float32), ids=np.zeros((0, 1), np.int64))
    with pytest.raises(UserError, match="empty"):
        open_calibration_data(tmp_path / "e.npz", SPECS)
    np.savez(tmp_path / "m.npz", x=np.zeros((2, 1, 3), np.float32), ids=np.zeros((3, 1), np.int64))
    with pytest.raises(UserError, match="disagree"):
        open_calibration_data(tmp_path / "m.npz", SPECS)
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(UserError, match="not an .npz"):
        open_calibration_data(tmp_path / "t.txt", SPECS)
    with pytest.raises(UserError, match="cannot use"):
        open_calibration_data(42, SPECS)


def test_split_reiterable_and_read_once():
    s = _samples(5)
    for source in (s, Reader(s)):
        rest, held = open_calibration_data(source, SPECS).split(2)
        _same(list(held), s[:2])
        _same(list(held), s[:2])  # held-back part is always re-iterable
        _same(list(rest), s[2:])
    rest, held = open_calibration_data(s, SPECS).split(2)
    assert len(rest) == 3 and len(held) == 2
    with pytest.raises(UserError, match="none would be left"):
        open_calibration_data(s, SPECS).split(5)
    with pytest.raises(UserError, match="only 2"):
        open_calibration_data(Reader(s[:2]), SPECS).split(3)


def test_split_keeps_sample_index_in_errors():
    s = _samples(3) + [{"ids": np.zeros(1, np.int64)}]
    rest, _ = open_calibration_data(s, SPECS).split(2)
    with pytest.raises(UserError, match="sample 3 "):
        list(rest)


def test_calibration_data_passes_through():
    data = open_calibration_data(_samples(), SPECS)
    assert open_calibration_data(data, SPECS) is data
    assert isinstance(data, CalibrationData)


def test_specs_from_model_validate_real_feed():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    m = helper.make_model(g)
    onnx.checker.check_model(m, full_check=True)
    with pytest.raises(UserError, match=r"'x' has shape \[2, 2\]"):
        list(open_calibration_data([{"x": np.zeros((2, 2), np.float32)}], input_specs_of(m)))
