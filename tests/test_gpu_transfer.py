"""benchmarks/gpu/transfer.py: a fine-tuned checkpoint packed small (float16, changed embedding rows only)
and rebuilt here loads and predicts as before."""
import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import train_args
from textclf.predict import Predictor

spec = importlib.util.spec_from_file_location(
    "transfer", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "transfer.py")
transfer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(transfer)


def test_packed_checkpoint_rebuilds_with_the_same_predictions(tmp_path, tiny_bert_dir, toy_data_dir, monkeypatch):
    from train.__main__ import main
    # the GPU side: the pretrained model arrives in float16 and is widened again; a run fine-tunes it
    transfer.fp16(tiny_bert_dir, tmp_path / "carried")
    transfer.fp32(tmp_path / "carried", tmp_path / "pretrained")
    assert main(train_args(toy_data_dir, tmp_path / "run", tmp_path / "pretrained", epochs=2)) == 0
    tiny_ckpt = tmp_path / "run" / "checkpoint-best"
    monkeypatch.setattr(transfer, "PART", 16 * 1024)          # several parts even for a tiny model
    transfer.pack(tiny_ckpt, tmp_path / "pretrained", tmp_path / "m")
    parts = sorted(tmp_path.glob("m.w.*"))
    assert len(parts) > 1 and all(p.stat().st_size <= transfer.PART for p in parts)
    # here: rebuilt against the original (float32) pretrained folder
    transfer.unpack(tmp_path / "m", tiny_bert_dir, tmp_path / "rebuilt")

    before, after = load_file(tiny_ckpt / "model.safetensors"), load_file(tmp_path / "rebuilt" / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        assert after[key].dtype == before[key].dtype
        assert torch.allclose(after[key], before[key], rtol=1e-3, atol=1e-3), key
    words = next(k for k in before if k.endswith(transfer.WORD))
    pretrained = load_file(tiny_bert_dir / "model.safetensors")[transfer.WORD].half().float()
    untouched = (before[words] == pretrained).all(dim=1)
    assert untouched.any() and (~untouched).any()            # the toy data touches some rows, not all
    assert torch.equal(after[words][untouched], pretrained[untouched])

    texts = ["play some jazz", "what is the weather tomorrow", "book a table for two"]
    original = Predictor.from_checkpoint(tiny_ckpt).predict_proba(texts)
    rebuilt = Predictor.from_checkpoint(tmp_path / "rebuilt").predict_proba(texts)
    assert abs(torch.as_tensor(original) - torch.as_tensor(rebuilt)).max() < 1e-2
    assert (tmp_path / "rebuilt" / "labels.json").read_text() == (tiny_ckpt / "labels.json").read_text()
