"""This machine as every result records it: the CPU's feature flags and a short description.

Used by train.optimize and train.export (which variants this CPU runs fast) and by every benchmark (the
machine beside its numbers). Standard library only: it loads no torch.
"""
import os
import platform

# the CPU features that decide CPU speed here: vector width, int8 dot products, bf16, AMX
SPEED_FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}


def cpu_flags():
    """The CPU's feature flags (/proc/cpuinfo), empty where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.split(":", 1)[1].split()) if line else set()


def _first(path, prefix):
    """The value of the first `prefix: value` line of path; "" where there is none or the file is unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), "")
    except OSError:
        return ""


def machine():
    """{"nproc", "cpu", "flags", "ram_gib", "os", "python"} of this machine (nproc: the cores this process may use)."""
    kib = int((_first("/proc/meminfo", "MemTotal:").split() or ["0"])[0])
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": _first("/proc/cpuinfo", "model name") or platform.processor(),
            "flags": sorted(SPEED_FLAGS & cpu_flags()),
            "ram_gib": round(kib / 2**20, 1), "os": platform.platform(), "python": platform.python_version()}
