"""What every benchmark records beside its numbers (the machine, the software, the commit): one helper each,
shared by all benchmarks. TorchServe's own files are read by serving.torchserve (read_properties,
read_model_config)."""
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the CPU features that decide CPU speed here: vector width, int8 dot products, bf16, AMX
SPEED_FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}


def _first(path, prefix):
    with open(path, encoding="utf-8") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), "")


def machine():
    """{"nproc", "cpu", "flags", "ram_gib", "os", "python"} of this machine (nproc: the cores this process may use)."""
    from textclf.predict import cpu_flags
    kib = int(_first("/proc/meminfo", "MemTotal:").split()[0] or 0)
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": _first("/proc/cpuinfo", "model name") or platform.processor(),
            "flags": sorted(SPEED_FLAGS & cpu_flags()),
            "ram_gib": round(kib / 2**20, 1), "os": platform.platform(), "python": platform.python_version()}


def append_section(record, text):
    """Append a markdown section to record (BENCHMARKS.md), a blank line before it; a new file gets a title."""
    record = Path(record)
    before = record.read_text(encoding="utf-8") if record.exists() else ""
    if not before:
        prefix = "# Benchmarks\n\nSections appended by benchmarks/serving.sh, newest last.\n\n"
    else:
        prefix = "" if before.endswith("\n\n") else "\n" if before.endswith("\n") else "\n\n"
    with record.open("a", encoding="utf-8") as f:
        f.write(prefix + text)


def machine_line(m=None):
    """'2 cores, AMD EPYC': the machine in the words the accuracy and seed tables use."""
    m = m or machine()
    return f"{m['nproc']} cores, {m['cpu']}"


def versions():
    found = {}
    for name in ("torch", "transformers", "torchserve", "torch-model-archiver", "locust", "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit():
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None
