"""Progress bars: drawn on a terminal when progress is on, nothing at all written otherwise (a log, a pipe, CI)."""

from __future__ import annotations

import io
import sys

import numpy as np
from onnx import TensorProto, helper

from onnxopt.calibration import calibrate
from onnxopt.pass_manager import PassContext, PassManager
from onnxopt.progress import progress_bar, shows_progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_nothing_is_written_to_a_stream_that_is_not_a_terminal():
    out = io.StringIO()
    assert list(progress_bar(range(5), "working", stream=out, mininterval=0)) == [0, 1, 2, 3, 4]
    with progress_bar(None, "manual", total=3, stream=out) as bar:
        bar.update(3)
        bar.set_postfix_str("done")
    assert out.getvalue() == "" and not shows_progress(True, out)


def test_the_bar_appears_on_a_terminal():
    tty = FakeTTY()
    assert list(progress_bar(range(5), "working", stream=tty, mininterval=0)) == [0, 1, 2, 3, 4]
    assert "working" in tty.getvalue() and "5/5" in tty.getvalue()


def test_switched_off_on_a_terminal_writes_nothing():
    tty = FakeTTY()
    list(progress_bar(range(5), "working", stream=tty, enabled=False))
    assert tty.getvalue() == ""


def test_pass_context_bar_follows_ctx_progress_and_stderr(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    list(PassContext(progress=False).progress_bar(range(3), "quiet"))
    assert tty.getvalue() == ""
    list(PassContext(progress=True).progress_bar(range(3), "loud", unit="layer"))
    assert "loud" in tty.getvalue() and "layer" in tty.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # progress on, but stderr is a file: nothing
    list(PassContext(progress=True).progress_bar(range(3), "to a file"))
    assert sys.stderr.getvalue() == ""


def test_pass_manager_and_calibration_bars(monkeypatch):
    from onnxopt.ir import Model
    from onnxopt.passes.canonicalize import canonicalize

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": np.full((1, 4), i, np.float32)} for i in range(4)]
    for stream, shown in ((io.StringIO(), False), (FakeTTY(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        PassManager(canonicalize({})).run(Model.from_onnx(proto), PassContext(progress=True))
        calibrate(proto, feeds, engine="onnxruntime")  # progress=None: on a terminal only
        text = stream.getvalue()
        assert ("onnxopt" in text and "calibrating" in text) == shown, text
        assert (text == "") == (not shown)
