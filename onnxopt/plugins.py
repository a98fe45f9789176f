"""Third-party passes and targets, found through entry points.

Why entry points: a team with its own accelerator or its own rewrite should not have to fork onnxopt. A package
declares, in its ``pyproject.toml``::

    [project.entry-points."onnxopt.targets"]
    myaccel = "myaccel_onnxopt:MyAccelTarget"      # a Target subclass (or a module defining some)

    [project.entry-points."onnxopt.passes"]
    fuse_foo = "myaccel_onnxopt.passes:FuseFoo"     # a Pass subclass (or a module whose import registers passes)

and once it is installed ``onnxopt targets`` / ``onnxopt passes`` list them (marked with the distribution),
``--target myaccel`` uses it, and a pipeline can name its passes.

A plugin must never break what does not use it: an entry point that fails to import, or names something that
is neither a Pass/Target nor a module defining some, or takes a name already in use, is skipped with one
logged warning that names it (entry point, value, distribution) and says why. Entry points are read once per
process (``clear_cache`` for tests).

This module is core (it knows ``Pass``); targets/ checks its own entries (``load_group(TARGET_GROUP)``), so
the import layering stays downward.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from onnxopt.pass_manager import PASS_REGISTRY, Pass

log = logging.getLogger(__name__)

PASS_GROUP = "onnxopt.passes"
TARGET_GROUP = "onnxopt.targets"
_ORIGINS: dict[tuple[str, str], str] = {}  # (group, registered name) -> distribution
_WARNED: set[tuple[str, str]] = set()

__all__ = ["PASS_GROUP", "TARGET_GROUP", "Plugin", "clear_cache", "classes_in", "load_group", "note_origin",
           "origin", "plugin_passes", "warn_skipped"]


@dataclass(frozen=True)
class Plugin:
    """One loaded entry point: its group, name, ``module:attr`` value, distribution and the object it names."""

    group: str
    name: str
    value: str
    dist: str
    obj: Any

    def label(self) -> str:
        return f"{self.group} plugin '{self.name}' ({self.value}, from {self.dist})"


def _dist_name(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    try:
        return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    except Exception:  # metadata that cannot be read: the plugin still loads
        return "an unknown distribution"


def warn_skipped(plugin: Plugin | Any, why: str) -> None:
    """The one warning for a plugin (a ``Plugin`` or a raw entry point), or a part of it, that is left out:
    names the entry point, its value and distribution, then ``why`` (what is left out and the cause)."""
    label = plugin.label() if isinstance(plugin, Plugin) else (
        f"{getattr(plugin, 'group', '?')} plugin '{getattr(plugin, 'name', '?')}' ({getattr(plugin, 'value', '?')}, "
        f"from {_dist_name(plugin)})")
    if (label, why) not in _WARNED:  # once per process, however often the registry is looked at
        _WARNED.add((label, why))
        log.warning("%s: %s", label, why)


@functools.cache
def _load(group: str) -> tuple[Plugin, ...]:
    try:
        found = list(entry_points(group=group))
    except Exception as e:  # broken metadata of some installed package: no plugins, no crash
        log.warning("could not read the %s entry points (%s: %s); no plugins of that kind are loaded", group,
                    type(e).__name__, e)
        return ()
    out = []
    for ep in sorted(found, key=lambda e: (e.name, e.value)):
        before = dict(PASS_REGISTRY)
        try:
            obj = ep.load()
        except Exception as e:
            warn_skipped(ep, f"skipped, importing it failed ({type(e).__name__}: {e})")
            continue
        finally:
            _keep_registered(before, ep)
        out.append(Plugin(group, ep.name, ep.value, _dist_name(ep), obj))
    return tuple(out)


def _keep_registered(before: dict[str, type[Pass]], ep: Any) -> None:
    """A plugin module's ``@register_pass`` cannot replace a pass registered before it: put that one back."""
    for name, cls in before.items():
        if PASS_REGISTRY.get(name) is not cls:
            new = PASS_REGISTRY[name]
            PASS_REGISTRY[name] = cls
            warn_skipped(ep, f"pass {new.__module__}.{new.__name__} left out, its name '{name}' is taken by "
                             f"{cls.__module__}.{cls.__name__}")


def load_group(group: str) -> list[Plugin]:
    """Every entry point of ``group`` that imports, each once per process; the others are logged and skipped."""
    return list(_load(group))


def clear_cache() -> None:
    """Forget what was loaded (tests install and remove plugins)."""
    _load.cache_clear()
    _ORIGINS.clear()
    _WARNED.clear()


def classes_in(obj: Any, base: type) -> list[type]:
    """``obj`` itself when it is a subclass of ``base``, else the subclasses a module defines (not imports)."""
    if inspect.isclass(obj):
        return [obj] if issubclass(obj, base) and obj is not base else []
    if isinstance(obj, ModuleType):
        return [v for v in vars(obj).values() if inspect.isclass(v) and issubclass(v, base) and v is not base
                and v.__module__ == obj.__name__]
    return []




def origin(group: str, name: str) -> str | None:
    """The distribution a plugin pass or target of that name came from; None for onnxopt's own."""
    return _ORIGINS.get((group, name))


def note_origin(group: str, name: str, dist: str) -> None:
    _ORIGINS[(group, name)] = dist


def plugin_passes() -> dict[str, type[Pass]]:
    """Register the passes of every ``onnxopt.passes`` entry point in ``PASS_REGISTRY``; returns them by name.

    A name taken by another class (onnxopt's own, or an earlier plugin) is not replaced."""
    added: dict[str, type[Pass]] = {}
    for plugin in load_group(PASS_GROUP):
        classes = classes_in(plugin.obj, Pass)
        if not classes:
            warn_skipped(plugin, f"skipped, it names a {type(plugin.obj).__name__}, not a Pass subclass or a "
                                 "module that defines one")
            continue
        for cls in classes:
            taken = PASS_REGISTRY.get(cls.name)
            if taken is not None and taken is not cls:
                warn_skipped(plugin, f"pass {cls.__module__}.{cls.__name__} left out, its name '{cls.name}' is "
                                     f"taken by {taken.__module__}.{taken.__name__}")
                continue
            PASS_REGISTRY[cls.name] = cls
            note_origin(PASS_GROUP, cls.name, plugin.dist)
            added[cls.name] = cls
    return added
