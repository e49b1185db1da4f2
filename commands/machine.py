"""The machine a benchmark ran on: CPU model, logical cores and SIMD flags (no third-party imports,
so the GPU machine's `decode-bench` and report read it without the voice stack's packages)."""

from __future__ import annotations

import os
from pathlib import Path


def parse_cpuinfo(text: str) -> dict:
    """CPU model, logical cores and the SIMD flags that decide int8/bf16 speed, from the text
    of /proc/cpuinfo (x86 `flags`, or ARM `Features`)."""
    model, cores, flags = "", 0, set()
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            cores += 1
        elif key in ("model name", "Model", "Hardware") and not model:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return {
        "cpu": model or None,
        "logical_cores": cores or None,
        "avx2": "avx2" in flags,
        "avx512": any(f.startswith("avx512") for f in flags),
        "amx": any(f.startswith("amx") for f in flags),
        "vnni": any("vnni" in f for f in flags),
    }


def machine_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """`parse_cpuinfo` of this machine, falling back on `platform` and `os.cpu_count()`."""
    import platform

    info = parse_cpuinfo(cpuinfo.read_text() if cpuinfo.is_file() else "")
    info["cpu"] = info["cpu"] or platform.processor() or platform.machine()
    info["logical_cores"] = info["logical_cores"] or os.cpu_count()
    return info
