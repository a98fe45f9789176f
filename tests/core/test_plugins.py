"""Third-party passes and targets through entry points: listed by `onnxopt passes` / `onnxopt targets`, usable
with --target, and a broken plugin is one warning naming it, never a failure of a command that does not use it.
The plugin is an in-memory distribution (its METADATA and entry_points.txt) over a module in sys.modules."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import sys
import types

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import plugins
from onnxopt.cli import main
from onnxopt.model_io import save_model
from onnxopt.pass_manager import PASS_REGISTRY, Pass, PassResult, register_pass
from onnxopt.targets import Target, get_target

MOD = "onnxopt_demo_plugin"
ENTRY_POINTS = f"""
[onnxopt.passes]
demo_noop = {MOD}:DemoNoop
broken = onnxopt_no_such_module:Thing
wrong = {MOD}:NOT_A_PASS
clash = {MOD}:ClashPass

[onnxopt.targets]
demo = {MOD}:DemoTarget
clash = {MOD}:ClashTarget
broken_target = onnxopt_no_such_module:Target
"""


class DemoNoop(Pass):
    """Demo plugin pass: counts the nodes, changes nothing."""

    def run(self, model, ctx):
        return PassResult(False, {"nodes_seen": len(model.graph.nodes)})


class ClashPass(Pass):
    """Takes a built-in pass's name."""

    name = "FoldConstants"


class DemoTarget(Target):
    name = "demo-accel"
    aliases = ("demo",)
    description = "a plugin target for tests"

    def lowering(self, options):
        return [DemoNoop()]


class ClashTarget(Target):
    name = "generic"
    description = "would shadow the built-in generic target"


class FakeDist(importlib.metadata.Distribution):
    def __init__(self, files: dict[str, str]):
        self.files_ = files

    def read_text(self, filename):
        return self.files_.get(filename)

    def locate_file(self, path):
        return path


@pytest.fixture
def installed(monkeypatch):
    mod = types.ModuleType(MOD)
    for cls in (DemoNoop, ClashPass, DemoTarget, ClashTarget):
        monkeypatch.setattr(cls, "__module__", MOD)
        setattr(mod, cls.__name__, cls)
    mod.NOT_A_PASS = 42
    monkeypatch.setitem(sys.modules, MOD, mod)
    dist = FakeDist({"METADATA": "Name: onnxopt-demo-plugin\nVersion: 0.1\n", "entry_points.txt": ENTRY_POINTS})
    monkeypatch.setattr(plugins, "entry_points", lambda group: [e for e in dist.entry_points if e.group == group])
    import onnxopt.passes  # noqa: F401  (the built-in passes are registered before the plugins, as in a command)

    saved = dict(PASS_REGISTRY)
    plugins.clear_cache()
    yield dist
    plugins.clear_cache()
    for name in [n for n, cls in PASS_REGISTRY.items() if not cls.__module__.startswith("onnxopt.")]:
        del PASS_REGISTRY[name]  # what the plugins added
    PASS_REGISTRY.update(saved)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "onnxopt.plugins"]


def test_passes_lists_plugin_passes_and_names_the_broken_ones(installed, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["passes"]) == 0
    out = capsys.readouterr().out.splitlines()
    demo = [ln for ln in out if ln.startswith("DemoNoop ")]
    assert len(demo) == 1 and "counts the nodes" in demo[0] and "[plugin: onnxopt-demo-plugin 0.1]" in demo[0]
    fold = [ln for ln in out if ln.startswith("FoldConstants ")]
    assert len(fold) == 1 and "plugin" not in fold[0] and PASS_REGISTRY["FoldConstants"] is not ClashPass
    warned = _warnings(caplog)
    for name, words in (("onnxopt.passes plugin 'broken'", "importing it failed"),
                        ("onnxopt.passes plugin 'wrong'", "not a Pass subclass"),
                        ("onnxopt.passes plugin 'clash'", "is taken by"),
                        ("onnxopt.targets plugin 'broken_target'", "importing it failed")):
        hits = [w for w in warned if w.startswith(name)]
        assert len(hits) == 1 and words in hits[0] and "onnxopt-demo-plugin 0.1" in hits[0], (name, warned)


def test_targets_lists_plugin_targets_and_keeps_builtin_names(installed, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["targets"]) == 0
        assert main(["targets"]) == 0  # a second look warns no more
    out = capsys.readouterr().out.splitlines()
    demo = [ln for ln in out if ln.startswith("demo-accel ")]
    assert demo == ["demo-accel   a plugin target for tests (alias demo)  [plugin: onnxopt-demo-plugin 0.1]"] * 2
    assert [ln for ln in out if ln.startswith("generic ")][0].startswith("generic      standard ONNX QDQ")
    warned = _warnings(caplog)
    assert len([w for w in warned if w.startswith("onnxopt.targets plugin 'clash'") and "'generic' is taken" in w]
               ) == 1
    assert type(get_target("demo")) is DemoTarget and type(get_target("generic")).__name__ != "ClashTarget"


def _model():
    w = numpy_helper.from_array(np.linspace(-1, 1, 8 * 3 * 9).astype(np.float32).reshape(8, 3, 3, 3), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["c"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_plugin_target_runs_and_broken_plugins_do_not_stop_other_targets(installed, tmp_path, capsys):
    src = save_model(_model(), tmp_path / "m.onnx")
    assert main(["optimize", str(src), "-o", str(tmp_path / "d.onnx"), "--target", "demo", "--quantize", "none",
                 "--report", str(tmp_path / "d.json")]) == 0
    passes = {p["name"]: p for p in json.loads((tmp_path / "d.json").read_text())["passes"]}
    assert passes["DemoNoop"]["runs"] == 1 and passes["DemoNoop"]["stats"]["nodes_seen"] == 2
    assert main(["optimize", str(src), "-o", str(tmp_path / "g.onnx"), "--target", "generic", "--quantize", "none"]
                ) == 0
    assert "error" not in capsys.readouterr().err


def test_a_plugin_module_cannot_replace_a_registered_pass(installed, monkeypatch, caplog):
    builtin = PASS_REGISTRY["FoldConstants"]
    sneaky = types.ModuleType("onnxopt_sneaky")

    def load():  # what importing a module with @register_pass on a clashing class does
        register_pass(type("FoldConstants", (Pass,), {"__module__": "onnxopt_sneaky", "__doc__": "sneaky"}))
        return sneaky

    ep = types.SimpleNamespace(name="sneaky", value="onnxopt_sneaky", group=plugins.PASS_GROUP, dist=None, load=load)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep] if group == plugins.PASS_GROUP else [])
    plugins.clear_cache()
    with caplog.at_level(logging.WARNING):
        plugins.plugin_passes()
    assert PASS_REGISTRY["FoldConstants"] is builtin
    assert any("plugin 'sneaky'" in w and "'FoldConstants' is taken" in w for w in _warnings(caplog))


def test_unreadable_entry_points_are_a_warning(monkeypatch, capsys, caplog):
    def boom(group):
        raise ValueError("bad metadata")

    monkeypatch.setattr(plugins, "entry_points", boom)
    plugins.clear_cache()
    try:
        with caplog.at_level(logging.WARNING):
            assert main(["targets"]) == 0
    finally:
        plugins.clear_cache()
    assert "generic" in capsys.readouterr().out
    assert any("bad metadata" in w for w in _warnings(caplog))
