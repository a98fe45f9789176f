"""onnxopt.host: cpuinfo parsing on canned samples, the host -> target mapping, which host stands for which target,
`onnxopt host`, `--target host`, and the speed check that only times int8 where the host stands for the target."""

from __future__ import annotations

import json
import logging
import platform
from collections import Counter

import onnx
import pytest

from onnxopt import host
from onnxopt.cli import main
from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pipeline import OptimizeOptions, optimize_model
from onnxopt.targets import get_target, recipe_quantize

# first processor of a Sapphire Rapids Xeon (GCP c3): avx512_vnni, avx_vnni and amx_int8
XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss \
ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq \
ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm \
3dnowprefetch fsgsbase bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap avx512ifma \
clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 arat \
avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq \
la57 rdpid cldemote movdiri movdir64b fsrm md_clear serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8
bogomips\t: 5399.99

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu
"""

# an AMD EPYC (Zen 2) with avx2 and no AVX-512 or VNNI
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid pni \
pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm \
cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase \
bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr arat npt \
nrip_save umip rdpid
"""

# arm64 Neoverse-N1 (Graviton2): dot product (asimddp), no i8mm; cpuinfo has no model name line
NEOVERSE_N1 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""

# arm64 Neoverse-V1 (Graviton3): i8mm as well (and svei8mm, which must not be read as i8mm on its own)
NEOVERSE_V1_FEATURES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
                        "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg "
                        "dcpodp svei8mm svebf16 i8mm bf16 dgh rng")

TARGETS = ("generic", "x86-vnni", "x86-avx2", "arm", "tensorrt")


def xeon() -> host.HostInfo:
    return host.parse_host(XEON, "x86_64", "1.32.0")


def epyc() -> host.HostInfo:
    return host.parse_host(EPYC, "x86_64", "1.32.0")


def n1() -> host.HostInfo:
    return host.parse_host(NEOVERSE_N1, "aarch64", "1.32.0")


def test_parse_intel_xeon_with_vnni():
    h = xeon()
    assert h.arch == "x86_64" and h.cpu == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert h.features == {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": True, "amx_int8": True}
    assert h.vnni and h.target == "x86-vnni" and h.onnxruntime == "1.32.0" and h.note == ""


def test_parse_amd_epyc_avx2_only():
    h = epyc()
    assert h.arch == "x86_64" and h.cpu == "AMD EPYC 7B12"
    assert h.features == {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "amx_int8": False}
    assert not h.vnni and h.target == "x86-avx2"


def test_parse_arm64_cores():
    h = n1()
    assert h.arch == "arm64" and h.cpu == "Neoverse-N1"
    assert h.features == {"dotprod": True, "i8mm": False} and h.target == "arm"
    v1 = host.parse_host(NEOVERSE_N1.replace("0xd0c", "0xd40").replace(
        NEOVERSE_N1.split("Features\t: ")[1].splitlines()[0], NEOVERSE_V1_FEATURES), "arm64")
    assert v1.cpu == "Neoverse-V1" and v1.features == {"dotprod": True, "i8mm": True}
    assert host.parse_host(NEOVERSE_N1.replace("0xd0c", "0xfff"), "arm64").cpu == "arm64 implementer 0x41 part 0xfff"
    no_dot = host.parse_host(NEOVERSE_N1.replace(" asimddp", ""), "aarch64")
    assert no_dot.features == {"dotprod": False, "i8mm": False} and no_dot.target == "arm"


def test_avx_vnni_alone_is_vnni():
    h = host.parse_host(XEON.replace(" avx512_vnni", ""), "x86_64")
    assert h.features["avx512_vnni"] is False and h.features["avx_vnni"] is True and h.target == "x86-vnni"


@pytest.mark.parametrize("machine,arch,target,features", [
    ("x86_64", "x86_64", "generic", {f: None for f, _ in host.X86_FEATURES}),  # e.g. an Intel Mac
    ("AMD64", "x86_64", "generic", {f: None for f, _ in host.X86_FEATURES}),  # Windows
    ("arm64", "arm64", "arm", {"dotprod": None, "i8mm": None}),  # Apple silicon: arm64, features unknown
    ("riscv64", "riscv64", "generic", {}),
])
def test_no_cpuinfo_says_unknown_rather_than_guess(machine, arch, target, features):
    h = host.parse_host(None, machine)
    assert (h.arch, h.target, h.features) == (arch, target, features)
    assert not h.vnni and not h.has("avx2")
    if features:
        assert h.note.startswith("CPU features unknown") and not h.features_known
        assert f"{next(iter(features)):<12} unknown" in h.lines()
    else:
        assert h.note == "" and h.features_known


def test_cpuinfo_without_flags_line_is_unknown():
    h = host.parse_host("processor\t: 0\nmodel name\t: Some CPU\n", "x86_64")
    assert h.cpu == "Some CPU" and h.features["avx2"] is None and h.target == "generic"
    assert "no flags line" in h.note


def test_target_mapping():
    none = {f: False for f, _ in host.X86_FEATURES}
    assert host.target_for("x86_64", {**none, "avx2": True, "avx512_vnni": True}) == "x86-vnni"
    assert host.target_for("x86_64", {**none, "avx2": True, "avx_vnni": True}) == "x86-vnni"
    assert host.target_for("x86_64", {**none, "avx2": True, "avx512f": True}) == "x86-avx2"  # AVX-512 without VNNI
    assert host.target_for("x86_64", none) == "x86-avx2"
    assert host.target_for("arm64", {"dotprod": False, "i8mm": False}) == "arm"
    assert host.target_for("ppc64le", {}) == "generic"


def test_which_host_stands_for_which_target():
    unknown_x86 = host.parse_host(None, "x86_64")
    stands = {name: {t for t in TARGETS if get_target(t).host_stands_for(h)}
              for name, h in (("xeon", xeon()), ("epyc", epyc()), ("n1", n1()), ("unknown", unknown_x86))}
    # a VNNI host does not reproduce an AVX2 host's saturating int8, so it stands for x86-vnni only
    assert stands == {"xeon": {"x86-vnni"}, "epyc": {"x86-avx2"}, "n1": {"arm"}, "unknown": set()}
    no_avx2 = host.parse_host(EPYC.replace(" avx2", ""), "x86_64")
    assert no_avx2.target == "x86-avx2" and "no avx2" in get_target("x86-avx2").host_mismatch(no_avx2)
    assert "VNNI" in get_target("x86-avx2").host_mismatch(xeon())


@pytest.mark.parametrize("h,target,measured", [(xeon(), "x86-vnni", True), (epyc(), "x86-vnni", False),
                                               (epyc(), "x86-avx2", True), (n1(), "x86-avx2", False),
                                               (n1(), "arm", True), (xeon(), "generic", False)])
def test_default_options_time_only_where_the_host_stands_for_the_target(monkeypatch, h, target, measured):
    monkeypatch.setattr(host, "current_host", lambda: h)
    opts = get_target(target).default_options()
    assert opts["speed_check"] is measured
    assert ("speed_check_skip_reason" in opts) is not measured


def test_cli_host_prints_the_features(monkeypatch, capsys):
    monkeypatch.setattr(host, "current_host", xeon)
    assert main(["host"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["arch         x86_64", "cpu          Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"]
    assert "avx512_vnni  yes" in lines and "amx_int8     yes" in lines
    assert "onnxruntime  1.32.0" in lines and lines[-1] == "target       x86-vnni"
    monkeypatch.setattr(host, "current_host", epyc)
    assert main(["host"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "avx2         yes" in lines and "avx512_vnni  no" in lines and lines[-1] == "target       x86-avx2"


def test_cli_host_on_this_machine(capsys):
    real = host.current_host()
    assert main(["host"]) == 0
    out = capsys.readouterr().out
    assert f"target       {real.target}" in out.splitlines()
    assert all(f"\n{name:<12} " in out for name in real.features)
    assert main(["host", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == real.to_dict() and data["target"] in TARGETS
    assert set(data) == {"arch", "cpu", "features", "onnxruntime", "target", "note"}


def test_targets_lists_host_as_an_alias(monkeypatch, capsys):
    monkeypatch.setattr(host, "current_host", n1)
    assert main(["targets"]) == 0
    assert "host         alias of arm on this machine: Neoverse-N1 (arm64: dotprod)" in capsys.readouterr().out


def test_target_host_resolves_to_this_machine():
    real = host.current_host()
    assert get_target("host").name == real.target
    try:
        with open(host.CPUINFO) as f:
            text: str | None = f.read()
    except OSError:
        text = None
    assert real == host.parse_host(text, platform.machine(), real.onnxruntime)
    assert real.target == host.target_for(real.arch, real.features)


def test_report_records_host_target_and_verify_host(monkeypatch):
    monkeypatch.setattr(host, "current_host", n1)
    model = build("small_cnn")
    out, report = optimize_model(model, OptimizeOptions.build(target="host", quantize="none", debug=True))
    onnx.checker.check_model(out, full_check=True)
    assert report["target"] == "arm" and report["target_requested"] == "host"
    assert report["host"] == n1().to_dict()
    assert report["verify"]["ok"] and report["verify"]["engine"] == "onnxruntime"
    assert report["verify"]["host"] == "Neoverse-N1 (arm64: dotprod)"
    assert report["verification"], "debug mode verifies each changed pass"
    assert all(r["engine"] == "onnxruntime" and r["host"] == "Neoverse-N1 (arm64: dotprod)"
               for r in report["verification"])
    _, plain = optimize_model(model, OptimizeOptions.build(target="arm", quantize="none"))
    assert "target_requested" not in plain


def quantize_auto(monkeypatch, h: host.HostInfo, target: str):
    """optimize resnet18 with data under --quantize auto as on host ``h``; the timing is stubbed, never run."""
    calls = []

    def fake_latencies(models, feed, rounds=15):
        calls.append(len(models))
        return [30.0, 10.0]

    monkeypatch.setattr(recipe_quantize, "median_latencies_ms", fake_latencies)
    monkeypatch.setattr(host, "current_host", lambda: h)
    model = build("resnet18")
    calib = [sample_inputs(model, seed=100 + i) for i in range(4)]
    out, report = optimize_model(model, OptimizeOptions.build(target=target, calibration=calib))
    return Counter(n.op_type for n in out.graph.node), report, calls


def test_speed_check_skipped_where_the_host_does_not_stand_for_the_target(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="onnxopt")
    ops, report, calls = quantize_auto(monkeypatch, epyc(), "x86-vnni")
    assert calls == [] and ops["QuantizeLinear"] > 0 and report["quantization"]["mode"] == "static"
    assert report["speed_check"] == {"measured": False, "reason": get_target("x86-vnni").host_mismatch(epyc())}
    assert "AMD EPYC 7B12" in report["speed_check"]["reason"]
    said = [r for r in caplog.records if "not timed" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno in (logging.INFO, logging.WARNING)


def test_speed_check_runs_where_the_host_stands_for_the_target(monkeypatch):
    ops, report, calls = quantize_auto(monkeypatch, xeon(), "x86-vnni")
    assert calls == [2] and ops["QuantizeLinear"] > 0
    assert report["speed_check"]["measured"] is True and report["speed_check"]["kept"] == "int8"
    assert report["speed_check"]["host"] == xeon().label()
