"""Kernel registry of the reference interpreter: one entry per (domain, op type, since-version).

A kernel is a plain function named after its op. Inputs arrive positionally as numpy arrays (``None`` for an
omitted optional input); attributes arrive as keyword arguments whose defaults are the ONNX spec's defaults.
It returns one array or a tuple of arrays, one per node output. A kernel registered with ``context=True``
receives a :class:`KernelContext` as its first argument (control flow needs it to run subgraphs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KernelFn = Callable[..., Any]


@dataclass(frozen=True)
class KernelSpec:
    op_type: str
    domain: str
    since: int
    fn: KernelFn
    context: bool = False


@dataclass
class KernelContext:
    """What a context kernel may use: the node, the opset in force and a way to run a subgraph."""

    node: Any
    opset: int
    run_subgraph: Callable[..., list] = field(repr=False)


_KERNELS: dict[tuple[str, str], list[KernelSpec]] = {}


def kernel(op_type: str, *, since: int = 1, domain: str = "", context: bool = False) -> Callable[[KernelFn], KernelFn]:
    """Register ``fn`` as the kernel of ``op_type`` for opsets >= ``since`` (until a later registration)."""

    def register(fn: KernelFn) -> KernelFn:
        specs = _KERNELS.setdefault((domain, op_type), [])
        specs[:] = [s for s in specs if s.since != since]
        specs.append(KernelSpec(op_type, domain, since, fn, context))
        specs.sort(key=lambda s: s.since)
        return fn

    return register


def lookup(op_type: str, domain: str, opset: int) -> KernelSpec | None:
    """The kernel in force for ``op_type`` at ``opset``: the one with the largest ``since`` <= opset."""
    domain = "" if domain == "ai.onnx" else domain
    found = None
    for spec in _KERNELS.get((domain, op_type), []):
        if spec.since <= opset:
            found = spec
    return found


def registered_ops() -> list[tuple[str, str]]:
    """Every (domain, op type) that has at least one kernel."""
    return sorted(_KERNELS)
