"""Carry MiniLM to a GPU machine and fine-tuned checkpoints back through small transfer limits (here: 64 MiB
in all, 16 MiB a file): float16 weights, and of the word-embedding matrix only the rows training changed
(rows of tokens the data never holds get no gradient and no weight decay, so they stay as they were).

fp16 SRC DST          here: MiniLM folder -> DST with fp16 weights (45 MB instead of 91)
fp32 SRC DST          device: back to float32 (the fp16-rounded values)
pack CKPT PRE PREFIX  device: checkpoint -> PREFIX.small.tar (json, tokenizer) + PREFIX.w.N (fp16 weights; word
                      embedding rows that differ from the pretrained PRE only), parts of 15 MiB
unpack PREFIX PRE DST here: rebuild the checkpoint folder (float32) from the parts and PRE (fp16-rounded)
"""
import glob
import shutil
import sys
import tarfile
from pathlib import Path

from safetensors.torch import load_file, save_file, load, save

WORD = "embeddings.word_embeddings.weight"
PART = 15 * 1024 * 1024


def copy_side_files(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt") and f.name != "data_config.json":
            shutil.copy(f, dst / f.name)


def fp16(src, dst):
    src, dst = Path(src), Path(dst)
    copy_side_files(src, dst)
    save_file({k: v.half().contiguous() for k, v in load_file(src / "model.safetensors").items()},
              dst / "model.safetensors")


def fp32(src, dst):
    src, dst = Path(src), Path(dst)
    copy_side_files(src, dst)
    save_file({k: v.float().contiguous() for k, v in load_file(src / "model.safetensors").items()},
              dst / "model.safetensors")


def pretrained_words(pre):
    return load_file(Path(pre) / "model.safetensors")[WORD].half().float()


def pack(ckpt, pre, prefix):
    ckpt = Path(ckpt)
    sd = load_file(ckpt / "model.safetensors")
    key = next(k for k in sd if k.endswith(WORD))
    base = pretrained_words(pre)
    rows = (sd[key] != base).any(dim=1).nonzero().flatten()
    out = {k: v.half().contiguous() for k, v in sd.items() if k != key}
    out["__rows__" + key] = rows
    out["__vals__" + key] = sd[key][rows].half().contiguous()
    blob = save(out)
    print(f"{ckpt}: {len(rows)} of {len(base)} word rows changed; {len(blob) / 1e6:.1f} MB packed")
    for i in range(0, len(blob), PART):
        Path(f"{prefix}.w.{i // PART}").write_bytes(blob[i: i + PART])
    with tarfile.open(f"{prefix}.small.tar", "w") as tar:
        for f in sorted(ckpt.rglob("*")):
            if f.is_file() and f.name != "model.safetensors":
                tar.add(f, arcname=str(f.relative_to(ckpt)))


def unpack(prefix, pre, dst):
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    parts = sorted(glob.glob(f"{prefix}.w.*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    packed = load(b"".join(Path(p).read_bytes() for p in parts))
    sd = {k: v.float() for k, v in packed.items() if not k.startswith("__")}
    for k in [k for k in packed if k.startswith("__rows__")]:
        key = k[len("__rows__"):]
        words = pretrained_words(pre)
        words[packed[k]] = packed["__vals__" + key].float()
        sd[key] = words.contiguous()
    save_file(sd, dst / "model.safetensors")
    with tarfile.open(f"{prefix}.small.tar") as tar:
        tar.extractall(dst, filter="data")   # files this module packed; nothing outside dst
    print(f"{dst}: rebuilt from {len(parts)} parts")


if __name__ == "__main__":
    {"fp16": fp16, "fp32": fp32, "pack": pack, "unpack": unpack}[sys.argv[1]](*sys.argv[2:])
