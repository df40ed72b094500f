"""What every benchmark records beside its numbers (the machine, the software, the commit): one helper each,
shared by all benchmarks. The machine is described by textclf.machine (train.optimize records it too) and
TorchServe's model-config.yaml is read by textclf.config.read_model_config."""
import subprocess
from importlib import metadata
from pathlib import Path

from textclf.machine import machine

ROOT = Path(__file__).resolve().parents[1]


def append_section(record, text):
    """Append a markdown section to record (BENCHMARKS.md), a blank line before it; a new file gets a title."""
    record = Path(record)
    before = record.read_text(encoding="utf-8") if record.exists() else ""
    if not before:
        prefix = "# Benchmarks\n\nSections appended by python -m benchmarks.serving, newest last.\n\n"
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
