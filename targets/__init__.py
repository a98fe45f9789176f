"""onnxopt.targets: one module per target; ``get_target(name)`` finds one by name or alias."""

from __future__ import annotations

from onnxopt.errors import UserError

from .base import Target, Violation

_TARGET_MODULES = ("generic", "x86_vnni", "x86_avx2", "arm", "tensorrt")


def all_targets() -> dict[str, type[Target]]:
    import importlib

    found: dict[str, type[Target]] = {}
    for mod_name in _TARGET_MODULES:
        mod = importlib.import_module(f"{__name__}.{mod_name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Target) and obj is not Target and obj.name:
                found[obj.name] = obj
    return found


def get_target(name: str) -> Target:
    targets = all_targets()
    for cls in targets.values():
        if name == cls.name or name in cls.aliases:
            return cls()
    names = ", ".join(sorted(targets))
    raise UserError(f"unknown target '{name}'; choose one of: {names}")


__all__ = ["Target", "Violation", "all_targets", "get_target"]
