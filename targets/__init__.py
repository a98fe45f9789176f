"""onnxopt.targets: one module per target; ``get_target(name)`` finds one by name or alias. Installed packages add
targets through ``onnxopt.targets`` entry points (``onnxopt.plugins``)."""

from __future__ import annotations

import logging

from onnxopt.errors import UserError

from .base import Target, Violation

log = logging.getLogger(__name__)
HOST = "host"  # not a target of its own: an alias, resolved per machine, of the target this host stands for
_TARGET_MODULES = ("generic", "x86_vnni", "x86_avx2", "arm", "tensorrt")


def all_targets() -> dict[str, type[Target]]:
    import importlib

    found: dict[str, type[Target]] = {}
    for mod_name in _TARGET_MODULES:
        mod = importlib.import_module(f"{__name__}.{mod_name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Target) and obj is not Target and obj.name:
                found[obj.name] = obj
    found.update(_plugin_targets(found))
    return found


def _plugin_targets(builtin: dict[str, type[Target]]) -> dict[str, type[Target]]:
    """Targets of installed ``onnxopt.targets`` entry points (onnxopt.plugins). One that does not load, is not a
    named Target, or takes a name or alias already in use is left out with a warning naming it."""
    from onnxopt.plugins import TARGET_GROUP, classes_in, load_group, note_origin, warn_skipped

    taken = {n for cls in builtin.values() for n in (cls.name, *cls.aliases)} | {HOST}
    out: dict[str, type[Target]] = {}
    for plugin in load_group(TARGET_GROUP):
        classes = [c for c in classes_in(plugin.obj, Target) if c.name]
        if not classes:
            warn_skipped(plugin, f"skipped, it names a {type(plugin.obj).__name__}, not a Target subclass with a "
                                 "name or a module that defines one")
        for cls in classes:
            clash = next((n for n in (cls.name, *cls.aliases) if n in taken), None)
            if clash is not None:
                warn_skipped(plugin, f"target {cls.__module__}.{cls.__name__} left out, the name '{clash}' is taken")
                continue
            taken.update((cls.name, *cls.aliases))
            out[cls.name] = cls
            note_origin(TARGET_GROUP, cls.name, plugin.dist)
    return out


def get_target(name: str) -> Target:
    """The target called ``name`` (or an alias); ``host`` is the target this machine stands for (onnxopt.host)."""
    if name == HOST:
        from onnxopt.host import current_host

        host = current_host()
        log.info("--target host: %s stands for target %s", host.label(), host.target)
        return get_target(host.target)
    targets = all_targets()
    for cls in targets.values():
        if name == cls.name or name in cls.aliases:
            return cls()
    names = ", ".join([*sorted(targets), HOST])
    raise UserError(f"unknown target '{name}'; choose one of: {names}")


__all__ = ["HOST", "Target", "Violation", "all_targets", "get_target"]
