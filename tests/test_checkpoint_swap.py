"""save_checkpoint swaps a finished folder in: a crash at any step leaves a loadable checkpoint under its name
(the old one before the swap, the new one after), and the next save or load cleans up."""
import json
from pathlib import Path

import pytest
import torch

import textclf.checkpoint as checkpoint
from textclf.checkpoint import load_checkpoint, save_checkpoint
from textclf.config import ModelConfig
from textclf.model import TextClassifier
from textclf.predict import Predictor
from textclf.tokenization import WordTokenizer

LABELS = ["food", "music", "weather"]


class Crash(RuntimeError):
    pass


@pytest.fixture
def model():
    torch.manual_seed(0)
    tokenizer = WordTokenizer(["play", "jazz", "rain", "soup"])
    config = ModelConfig(embedding="random", encoder="cnn", num_labels=3, max_length=16, vocab_size=len(tokenizer),
                         embedding_dim=8, num_filters=4).validate()
    return TextClassifier.for_words(config), tokenizer


def epoch_of(folder):
    load_checkpoint(folder)   # loads, strictly
    return json.loads((checkpoint.readable(folder) / "metrics.json").read_text())["epoch"]


@pytest.fixture
def saved(model, tmp_path):
    """checkpoint-best holding epoch 1; -> a function saving epoch 2 over it."""
    m, tokenizer = model
    folder = tmp_path / "checkpoint-best"
    save_checkpoint(folder, m, tokenizer, LABELS, {"epoch": 1})
    return folder, lambda: save_checkpoint(folder, m, tokenizer, LABELS, {"epoch": 2})


def test_crash_while_writing_keeps_the_old_checkpoint(saved, monkeypatch):
    folder, save_again = saved
    monkeypatch.setattr(checkpoint, "save_labels", lambda *a: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        save_again()
    assert epoch_of(folder) == 1
    monkeypatch.undo()
    save_again()
    assert epoch_of(folder) == 2 and not folder.with_name("checkpoint-best.tmp").exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "two-renames"])
def test_crash_before_and_after_the_swap(saved, monkeypatch, exchange):
    folder, save_again = saved
    if not exchange:
        monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    swap = checkpoint._swap_in

    def swap_then_crash(tmp, dest):
        swap(tmp, dest)
        raise Crash()
    monkeypatch.setattr(checkpoint, "_swap_in", lambda tmp, dest: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        save_again()
    assert epoch_of(folder) == 1                      # crashed before the swap: the old one
    monkeypatch.setattr(checkpoint, "_swap_in", swap_then_crash)
    with pytest.raises(Crash):
        save_again()
    assert epoch_of(folder) == 2                      # crashed after it: the new one


def test_crash_between_the_two_renames_leaves_the_old_one_readable(saved, monkeypatch):
    folder, save_again = saved
    monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    rename = Path.rename

    def crash_on_second(self, target):
        if self.name == "checkpoint-best.tmp" and Path(target).name == "checkpoint-best":
            raise Crash()
        return rename(self, target)
    monkeypatch.setattr(Path, "rename", crash_on_second)
    with pytest.raises(Crash):
        save_again()
    monkeypatch.setattr(Path, "rename", rename)
    assert not folder.exists() and folder.with_name("checkpoint-best.old").is_dir()
    assert epoch_of(folder) == 1                      # readers read the complete old one, renaming nothing
    assert Predictor.from_checkpoint(folder).labels == LABELS
    assert not folder.exists()
    save_again()                                      # the next save puts it back first, then swaps
    assert epoch_of(folder) == 2 and not folder.with_name("checkpoint-best.old").exists()


def test_the_atomic_exchange_works_here(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    if not checkpoint._exchange(a, b):
        pytest.skip("this system has no renameat2(RENAME_EXCHANGE); saves use the two renames")
    assert (b / "x").read_text() == "a" and not (a / "x").exists()
