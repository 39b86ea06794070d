"""mnistgan.numerics: portable mode holds every library to one code path whatever this CPU would pick (caps
set from outside stand for another CPU kind); native mode takes this CPU's path; the fingerprint says which."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pipeline_utils import env

from mnistgan import numerics

# What another CPU kind would do, emulated on this one: every library below its usual instruction set.
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "SSE4_2"}

# Five steps of conv + linear + Adam after numerics.apply, in a fresh process: the parameters' sha256 and the
# fingerprint.
PROBE = """
import hashlib, json, sys
from mnistgan import numerics
numerics.apply(sys.argv[1], 1)
import torch
torch.manual_seed(0)
nn = torch.nn
net = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 24 * 24, 10))
opt = torch.optim.Adam(net.parameters(), 1e-3)
for _ in range(5):
    loss = net(torch.randn(16, 1, 28, 28)).logsumexp(1).mean()
    opt.zero_grad(); loss.backward(); opt.step()
h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
print(json.dumps({"sha256": h, "fingerprint": numerics.fingerprint(sys.argv[1])}))
"""


def probe(mode: str, extra_env: dict[str, str] | None = None) -> dict:
    e = env() | (extra_env or {})
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=e, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_isa_levels_from_cpu_flags_and_caps():
    avx512 = {"sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
    assert numerics.cpu_isa(avx512) == "avx512_core"
    assert numerics.cpu_isa(avx512 | {"amx_tile", "amx_bf16"}) == "avx512_core_amx"
    assert numerics.cpu_isa({"sse4_1", "avx", "avx2"}) == "avx"  # AVX2 without FMA: oneDNN's avx2 needs both
    assert numerics.cpu_isa(set()) == "none"
    assert numerics.capped("avx512_core", "AVX2") == "avx2"
    assert numerics.capped("avx2", "AVX512_CORE") == "avx2"  # a cap above the CPU changes nothing
    assert numerics.capped("avx2", None) == "avx2"
    assert numerics.capped("avx2", "AVX10_2") == "avx2 (cap avx10_2)"


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="numerics.mode: unknown value 'fast'; allowed: portable, native"):
        numerics.apply("fast", 0)


@pytest.mark.skipif(
    numerics.cpu_isa(set(numerics._cpuinfo().get("flags", "").split())) in ("none", "sse41", "avx"),
    reason="portable mode is defined for x86-64 CPUs with AVX2",
)
def test_portable_bytes_do_not_depend_on_the_path_this_cpu_would_take_and_native_bytes_do():
    portable, portable_other = probe("portable"), probe("portable", OTHER_CPU)
    native, native_other = probe("native"), probe("native", OTHER_CPU)
    assert portable["sha256"] == portable_other["sha256"]
    assert native["sha256"] != native_other["sha256"]
    # the fingerprint says which path each library took
    fp, other = portable_other["fingerprint"], native_other["fingerprint"]
    assert (fp["numerics"], fp["aten"], fp["mkl"], fp["onednn"], fp["threads"]) == (
        "portable",
        "AVX2",
        "COMPATIBLE",
        "avx2",
        1,
    )
    assert (other["numerics"], other["aten"], other["mkl"], other["onednn"]) == ("native", "DEFAULT", "SSE4_2", "sse41")
    assert numerics.differences(fp, other) == ["numerics", "aten", "onednn", "mkl"]
    for key in ("cpu", "cpu_vendor", "torch", "numpy", "mkl_version", "os", "libc", "python"):
        assert fp[key] and fp[key] == other[key], key
