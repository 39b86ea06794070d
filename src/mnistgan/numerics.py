"""Which code path each numeric library takes (`numerics` in params.yaml), and the platform fingerprint.

Every stage calls `apply` before its first tensor operation; `fingerprint` describes the platform a run
computed on (metrics/platform.json, MLflow tags, `mnistgan verify`). No torch at import: the stages call
`apply` before the modules that compute are used, and the libraries read these variables lazily.

- `portable`: every library held to one code path that any x86-64 CPU with AVX2, Intel or AMD, takes,
  and a fixed thread count, so the bytes of a run do not depend on which CPU kind ran it:
  - ATen's own kernels (elementwise ops, reductions, `randn`): AVX2 (`ATEN_CPU_CAPABILITY`);
  - oneDNN's convolutions: capped at AVX2 (`ONEDNN_MAX_CPU_ISA`);
  - MKL's matrix products: its conditional-reproducibility branch COMPATIBLE (`MKL_CBWR`), the only one MKL
    honours on AMD as well as Intel.
  What each costs and what each changes is measured in BENCHMARKS.md and docs/reproducibility.md.
- `native`: each library takes the fastest path this CPU offers (AVX-512, AMX, MKL's vendor branch), and
  the bytes are those of this CPU kind.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

MODES = ("portable", "native")
# The variables portable mode sets; outside them, each names what a library would pick by itself.
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
# x86 instruction-set levels, lowest first, as oneDNN names its caps; the flags of /proc/cpuinfo for each.
ISA_LEVELS = (
    ("sse41", ("sse4_1",)),
    ("avx", ("avx",)),
    ("avx2", ("avx2", "fma")),
    ("avx512_core", ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
    ("avx512_core_amx", ("avx512f", "avx512bw", "avx512vl", "avx512dq", "amx_tile", "amx_bf16")),
)


def apply(mode: str, threads: int) -> None:
    """Pin the libraries' code paths (portable) and the thread count (threads > 0) for this process.

    Call it before the first tensor operation: ATen, oneDNN and MKL each read their variable once, at first
    use (checked: set after `import torch` and before any op, each takes effect). The thread count goes to
    OpenMP's variable, read when torch loads, and to torch itself when it is already loaded."""
    if mode not in MODES:
        raise ValueError(f"numerics.mode: unknown value {mode!r}; allowed: {', '.join(MODES)}")
    if mode == "portable":
        os.environ.update(PORTABLE_ENV)
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_isa(flags: set[str]) -> str:
    """The highest instruction-set level (ISA_LEVELS) whose flags the CPU has; "none" below SSE4.1."""
    best = "none"
    for name, needed in ISA_LEVELS:
        if set(needed) <= flags:
            best = name
    return best


def capped(isa: str, cap: str | None) -> str:
    """oneDNN's path: the CPU's level, or the cap when that is lower (unknown caps are reported as given)."""
    names = [name for name, _ in ISA_LEVELS]
    if not cap or isa not in names:
        return isa
    cap = cap.lower()
    return names[min(names.index(isa), names.index(cap))] if cap in names else f"{isa} (cap {cap})"


def _mkl_version(build: str) -> str:
    """MKL's version from torch's build description ("... Math Kernel Library Version 2024.2-Product ...")."""
    for line in build.splitlines():
        if "Math Kernel Library Version" in line:
            return line.split("Version", 1)[1].split("-")[0].strip()
    return "none"


def _openblas(build: dict[str, Any]) -> dict[str, str]:
    """numpy's BLAS as built (`np.show_config`: the same in every process, whichever other BLAS is loaded) and
    the kernel OpenBLAS chose for this CPU (threadpoolctl reads its core name)."""
    found = {"blas": f"{build.get('name', 'unknown')} {build.get('version', '')}".strip()}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return found
    cores = sorted({str(lib.get("architecture")) for lib in threadpool_info() if lib.get("internal_api") == "openblas"})
    return found | ({"openblas_core": ",".join(cores)} if cores else {})


def fingerprint(mode: str, device: str = "cpu") -> dict[str, Any]:
    """The platform this process computes on: CPU, the path each numeric library took, threads, versions,
    OS and libc. Two runs with equal fingerprints take the same code paths; unequal ones may differ in bytes."""
    import numpy as np
    import torch

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = cpu_isa(flags)
    config: dict[str, Any] = np.show_config(mode="dicts")  # type: ignore[assignment]
    simd = config.get("SIMD Extensions", {})
    found: dict[str, Any] = {
        "numerics": mode,
        "device": device,
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": info.get("vendor_id", "unknown"),
        "cpu_isa": isa,
        "machine": platform.machine(),
        "aten": torch.backends.cpu.get_cpu_capability(),
        "onednn": capped(isa, os.environ.get("ONEDNN_MAX_CPU_ISA")) if torch.backends.mkldnn.is_available() else "off",
        "mkl": os.environ.get("MKL_CBWR", "AUTO") if torch.backends.mkl.is_available() else "off",
        "numpy_simd": ",".join(simd.get("found", [])) or "baseline",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mkl_version": _mkl_version(torch.__config__.show()),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "libc": " ".join(platform.libc_ver()).strip() or "unknown",
    }
    found.update(_openblas(config.get("Build Dependencies", {}).get("blas", {})))
    if device.startswith("cuda") and torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(torch.device(device))
        found["cuda"] = str(torch.version.cuda)
    return found


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fingerprint keys whose values differ (or that only one has), in a's order then b's."""
    keys = list(a) + [k for k in b if k not in a]
    return [k for k in keys if a.get(k) != b.get(k)]
