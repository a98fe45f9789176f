"""The machine onnxopt runs on: the CPU features that decide int8 speed and arithmetic, and the target it stands for.

Why this exists: int8 behaves differently by ISA. With VNNI (``avx512_vnni`` / ``avx_vnni``) onnxruntime's U8S8
kernels accumulate in int32; without it they go through VPMADDUBSW, whose int16 intermediate saturates
(REFERENCE.md, "Targets"), and the speed gain of int8 is far smaller (REFERENCE.md, "Hosts"). So a timing or an
int8 result taken here only means something for a target whose kernels this CPU runs; the report says which host
measured, and ``--target host`` picks the target this machine is.

The parser (``parse_host``) is a pure function of the ``/proc/cpuinfo`` text and the machine string, so canned
samples test it. Where there is no ``/proc/cpuinfo`` (macOS, Windows) the features are unknown (``None``), never
guessed; an x86 host with unknown features maps to ``generic`` because VNNI cannot be told from AVX2.
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CPUINFO = "/proc/cpuinfo"
# the features that decide int8 speed and arithmetic, by architecture: (name we report, cpuinfo flag)
X86_FEATURES = (("avx2", "avx2"), ("avx512f", "avx512f"), ("avx512_vnni", "avx512_vnni"),
                ("avx_vnni", "avx_vnni"), ("amx_int8", "amx_int8"))
ARM_FEATURES = (("dotprod", "asimddp"), ("i8mm", "i8mm"))
VNNI = ("avx512_vnni", "avx_vnni")

_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
# names of common arm64 cores (cpuinfo gives only implementer and part numbers); others print as numbers
_ARM_PARTS = {("0x41", "0xd03"): "Cortex-A53", ("0x41", "0xd05"): "Cortex-A55", ("0x41", "0xd08"): "Cortex-A72",
              ("0x41", "0xd0b"): "Cortex-A76", ("0x41", "0xd0c"): "Neoverse-N1", ("0x41", "0xd40"): "Neoverse-V1",
              ("0x41", "0xd49"): "Neoverse-N2", ("0x41", "0xd4f"): "Neoverse-V2", ("0x61", "0x000"): "Apple"}


@dataclass(frozen=True)
class HostInfo:
    """What this machine is, for int8: ``features`` maps each feature of its architecture to True/False, or to
    None when it could not be read (``note`` says why); other architectures have no features listed."""

    arch: str
    cpu: str
    features: dict[str, bool | None] = field(default_factory=dict)
    onnxruntime: str | None = None
    target: str = "generic"
    note: str = ""

    def has(self, feature: str) -> bool:
        """True only when the feature is known to be there (unknown counts as absent: nothing is guessed)."""
        return self.features.get(feature) is True

    @property
    def features_known(self) -> bool:
        return all(v is not None for v in self.features.values())

    @property
    def vnni(self) -> bool:
        return any(self.has(f) for f in VNNI)

    @property
    def int8_is_spec_exact(self) -> bool:
        """Whether onnxruntime's u8 x s8 kernels here compute what the ONNX spec says (int32 sums of products):
        true on arm64 and on x86 with VNNI; false on x86 without it, where VPMADDUBSW adds pairs of products in a
        saturating int16, and where the features are unknown (nothing is guessed)."""
        return self.arch == "arm64" or (self.arch == "x86_64" and self.vnni)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        """One line for reports: the CPU, its architecture and the int8 features it has."""
        if not self.features_known:
            feats = "features unknown"
        else:
            feats = ", ".join(k for k, v in self.features.items() if v) or "no int8 features"
        return f"{self.cpu} ({self.arch}: {feats})"

    def lines(self) -> list[str]:
        """The facts one per line, as ``onnxopt host`` prints them."""
        def say(v: bool | None) -> str:
            return "unknown" if v is None else "yes" if v else "no"

        out = [f"{'arch':<12} {self.arch}", f"{'cpu':<12} {self.cpu}"]
        out += [f"{name:<12} {say(v)}" for name, v in self.features.items()]
        out += [f"{'onnxruntime':<12} {self.onnxruntime or 'not installed'}", f"{'target':<12} {self.target}"]
        if self.note:
            out.append(f"{'note':<12} {self.note}")
        return out


def normalize_arch(machine: str) -> str:
    """``platform.machine()`` spellings to one name: x86_64, arm64, or the machine string lowercased."""
    m = machine.strip().lower()
    return _ARCH.get(m, m or "unknown")


def target_for(arch: str, features: dict[str, bool | None]) -> str:
    """The target a host stands for: x86 with VNNI -> x86-vnni, x86 without -> x86-avx2, arm64 -> arm, else generic.

    x86 with unknown features is generic: VNNI and AVX2 hosts need different weights, and we do not guess."""
    if arch == "arm64":
        return "arm"
    if arch == "x86_64":
        if any(features.get(f) is True for f in VNNI):
            return "x86-vnni"
        if any(v is None for v in features.values()):
            return "generic"
        return "x86-avx2"
    return "generic"


def _first_block(text: str) -> dict[str, str]:
    """``key: value`` pairs of the first processor in cpuinfo (the features are the same on every core)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _cpu_name(fields: dict[str, str], arch: str) -> str:
    for key in ("model name", "cpu model", "processor name", "hardware"):
        if fields.get(key):
            return fields[key]
    impl, part = fields.get("cpu implementer", "").lower(), fields.get("cpu part", "").lower()
    if arch == "arm64" and impl:
        return _ARM_PARTS.get((impl, part), f"arm64 implementer {impl} part {part or '?'}")
    return "unknown"


def parse_host(cpuinfo: str | None, machine: str, onnxruntime_version: str | None = None) -> HostInfo:
    """A HostInfo from the text of /proc/cpuinfo (``None`` when there is none) and ``platform.machine()``."""
    arch = normalize_arch(machine)
    wanted = X86_FEATURES if arch == "x86_64" else ARM_FEATURES if arch == "arm64" else ()
    fields = _first_block(cpuinfo) if cpuinfo else {}
    flags_line = fields.get("flags") if arch == "x86_64" else fields.get("features") if arch == "arm64" else None
    note = ""
    if flags_line is None:
        features: dict[str, bool | None] = {name: None for name, _ in wanted}
        if wanted:
            note = (f"CPU features unknown: no {CPUINFO} on this system" if not cpuinfo
                    else f"CPU features unknown: {CPUINFO} has no flags line")
    else:
        flags = set(flags_line.split())
        features = {name: flag in flags for name, flag in wanted}
    return HostInfo(arch=arch, cpu=_cpu_name(fields, arch), features=features, onnxruntime=onnxruntime_version,
                    target=target_for(arch, features), note=note)


def _read_cpuinfo() -> str | None:
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


@functools.lru_cache(maxsize=1)
def current_host() -> HostInfo:
    """This machine (read once per process)."""
    host = parse_host(_read_cpuinfo(), platform.machine(), _onnxruntime_version())
    log.debug("host: %s, stands for target %s", host.label(), host.target)
    return host


__all__ = ["HostInfo", "current_host", "normalize_arch", "parse_host", "target_for"]
