"""Copy config.properties and handlers/model-config.yaml into the ConfigMap of deploy/k8s/textclf.yaml.

    .venv/bin/python deploy/sync_configmap.py

The ConfigMap carries both files unchanged (tests/test_deploy.py compares them); this rewrites its `data:`
block and leaves the rest of the file, comments included, as it is. After a change of model-config.yaml,
check the pods' CPU (workers x threads) in textclf.yaml and the InferenceServices too.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "k8s" / "textclf.yaml"
FILES = {"config.properties": ROOT / "config.properties", "model-config.yaml": ROOT / "handlers" / "model-config.yaml"}


def main():
    text = MANIFEST.read_text(encoding="utf-8")
    first, sep, rest = text.partition("\n---\n")      # the ConfigMap is the first document
    head, found, _ = first.partition("\ndata:\n")
    if not (sep and found and "kind: ConfigMap" in head):
        print(f"sync_configmap: {MANIFEST} does not start with a ConfigMap with a data: block", file=sys.stderr)
        return 2
    block = "".join(f"  {key}: |\n" + "".join(f"    {line}\n" if line else "\n"
                                             for line in path.read_text(encoding="utf-8").splitlines())
                    for key, path in FILES.items())
    MANIFEST.write_text(f"{head}\ndata:\n{block.rstrip(chr(10))}\n---\n{rest}", encoding="utf-8")
    print(f"{MANIFEST}: ConfigMap data copied from {', '.join(str(p.relative_to(ROOT)) for p in FILES.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
