"""`python -m train` called in-process: what a run writes, how well it learns the toy set, how it fails."""
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import KEYWORDS, run_failing_cli, train_args, write_glove, write_toy_dataset
from textclf.predict import Predictor
from train.__main__ import main
from train.data import load_dataset

CHECKPOINT_FILES = ["config.json", "labels.json", "model.safetensors", "metrics.json", "train_args.json"]


def check_run(out, epochs):
    """Files every run writes; returns (summary, metrics.jsonl records)."""
    for name in ("checkpoint-best", "checkpoint-last"):
        for f in CHECKPOINT_FILES:
            assert (out / name / f).is_file(), f"{name}/{f} is missing"
        assert (out / name / "tokenizer").is_dir()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    for r in records:
        assert {"epoch", "step", "train_loss", "valid_accuracy", "valid_macro_f1", "lr"} <= set(r)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == epochs
    best = json.loads((out / "checkpoint-best" / "metrics.json").read_text())
    assert best["valid_accuracy"] == max(r["valid_accuracy"] for r in records)
    last = json.loads((out / "checkpoint-last" / "metrics.json").read_text())
    assert last["epoch"] == epochs
    return summary, records


def test_transformer_run(tiny_run, toy_data_dir):
    rc, out = tiny_run
    assert rc == 0
    summary, records = check_run(out, epochs=10)
    for name in ("checkpoint-best", "checkpoint-last"):
        assert (out / name / "tokenizer" / "tokenizer_config.json").is_file()
        assert json.loads((out / name / "transformer" / "config.json").read_text())["hidden_size"] == 32
        config = json.loads((out / name / "config.json").read_text())
        assert (config["embedding"], config["encoder"], config["max_length"]) == ("transformer", "cls", 32)
        assert json.loads((out / name / "labels.json").read_text()) == sorted(KEYWORDS)
    args = json.loads((out / "checkpoint-best" / "train_args.json").read_text())
    assert args["encoder"] == "cls" and args["epochs"] == 10
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert summary["test_accuracy"] >= 0.9, summary   # the toy set is separable; chance is 1/3

    # The reported test accuracy is what checkpoint-best gives through the one prediction path.
    test = load_dataset(toy_data_dir).test
    predictor = Predictor.from_checkpoint(out / "checkpoint-best")
    predicted = [p["label"] for p in predictor.predict([e.text for e in test])]
    accuracy = np.mean([p == e.label for p, e in zip(predicted, test)])
    assert accuracy == pytest.approx(summary["test_accuracy"])


def test_random_word_embedding_run(tmp_path, toy_data_dir):
    out = tmp_path / "toy-random-cnn"
    assert main(train_args(toy_data_dir, out, "random", encoder="cnn", lr="1e-2",
                           extra=["--embedding-dim", "32", "--num-filters", "16"])) == 0
    summary, _ = check_run(out, epochs=10)
    config = json.loads((out / "checkpoint-best" / "config.json").read_text())
    assert (config["embedding"], config["encoder"], config["embedding_dim"]) == ("random", "cnn", 32)
    vocab = (out / "checkpoint-best" / "tokenizer" / "vocab.txt").read_text().split("\n")
    assert vocab[:2] == ["[PAD]", "[UNK]"] and "jazz" in vocab
    assert config["vocab_size"] == len([w for w in vocab if w])
    assert not (out / "checkpoint-best" / "transformer").exists()
    assert summary["test_accuracy"] >= 0.9, summary


def test_glove_text_file_run(tmp_path, toy_data_dir):
    vectors = write_glove(tmp_path / "vectors.txt")
    out = tmp_path / "toy-glove-densenet-cnn"
    assert main(train_args(toy_data_dir, out, f"glove:{tmp_path / 'vectors.txt'}", encoder="densenet-cnn", lr="1e-2",
                           extra=["--freeze-embedding", "--glove-top", "3", "--densenet-growth", "16"])) == 0
    summary, _ = check_run(out, epochs=10)
    ckpt = out / "checkpoint-best"
    config = json.loads((ckpt / "config.json").read_text())
    assert (config["embedding"], config["embedding_dim"], config["freeze_embedding"]) == ("glove", 8, True)
    vocab = (ckpt / "tokenizer" / "vocab.txt").read_text().rstrip("\n").split("\n")
    assert "umbrella" in vocab and "drizzle" in vocab     # among the file's top 3, though unseen in training
    assert "jazz" in vocab and "please" in vocab          # training words, with and without a vector
    # Frozen: every word that came with a vector still has exactly that vector after training.
    weights = load_file(str(ckpt / "model.safetensors"))["embedding.embed.weight"].numpy()
    for word, vector in vectors.items():
        np.testing.assert_allclose(weights[vocab.index(word)], vector, atol=1e-6, err_msg=word)
    assert summary["test_accuracy"] >= 0.9, summary


def test_malformed_data_exits_2_without_traceback(tmp_path, capfd, caplog):
    folder = write_toy_dataset(tmp_path / "data")
    lines = (folder / "train.txt").read_text().splitlines()
    lines[6] = "a line without any tab"
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    rc, text = run_failing_cli(main, capfd, caplog, train_args(folder, tmp_path / "run", "random", encoder="cnn"))
    assert rc == 2
    assert f"{folder / 'train.txt'}:7: expected 2 tab-separated fields" in text
    assert not (tmp_path / "run" / "checkpoint-best").exists()


def test_unseen_valid_label_exits_2(tmp_path, capfd, caplog):
    folder = write_toy_dataset(tmp_path / "data")
    with (folder / "valid.txt").open("a") as f:
        f.write("book a flight to paris\ttravel\n")
    rc, text = run_failing_cli(main, capfd, caplog, train_args(folder, tmp_path / "run", "random", encoder="cnn"))
    assert rc == 2
    assert f"{folder / 'valid.txt'}:31:" in text and "'travel'" in text


@pytest.mark.parametrize("embedding, encoder, message", [
    ("random", "cls", "encoder 'cls' needs a transformer embedding"),
    ("no-such-embedding", "cnn", "not an embedding"),
])
def test_bad_model_choice_exits_2(tmp_path, toy_data_dir, capfd, caplog, embedding, encoder, message):
    rc, text = run_failing_cli(main, capfd, caplog, train_args(toy_data_dir, tmp_path / "run", embedding, encoder=encoder))
    assert rc == 2
    assert message in text


def test_missing_data_folder_exits_2(tmp_path, capfd, caplog):
    rc, text = run_failing_cli(main, capfd, caplog, train_args(tmp_path / "nowhere", tmp_path / "run", "random", encoder="cnn"))
    assert rc == 2
    assert "no train.txt or train.tsv" in text


@pytest.mark.parametrize("buckets", [0, 4])
def test_batch_order_covers_every_example_once(buckets):
    import random
    from types import SimpleNamespace
    from train.loop import batch_order
    rng = random.Random(0)
    examples = [SimpleNamespace(text="w " * rng.randint(1, 60)) for _ in range(203)]
    batches = batch_order(examples, 8, random.Random(1), buckets)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))
    assert all(1 <= len(b) <= 8 for b in batches)
    assert sum(len(b) < 8 for b in batches) <= max(1, -(-203 // (8 * max(buckets, 1))))


def test_length_buckets_cut_padding_and_keep_batches_shuffled():
    import random
    from types import SimpleNamespace
    from train.loop import batch_order
    rng = random.Random(0)
    examples = [SimpleNamespace(text="w " * rng.randint(1, 60)) for _ in range(512)]

    def padded(batches):
        return sum(len(b) * max(len(examples[i].text) for i in b) for b in batches)

    plain, bucketed = batch_order(examples, 16, random.Random(1)), batch_order(examples, 16, random.Random(1), 8)
    assert padded(bucketed) < 0.8 * padded(plain)
    longest = [max(len(examples[i].text) for i in b) for b in bucketed]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


@pytest.mark.parametrize("buckets", [0, 4])
def test_resumed_run_takes_the_batch_orders_of_the_uninterrupted_run(buckets):
    import itertools
    from types import SimpleNamespace
    from train.loop import epoch_orders
    examples = [SimpleNamespace(text="w " * (i % 17 + 1)) for i in range(150)]
    straight = list(itertools.islice(epoch_orders(examples, 8, 42, buckets), 3))
    resumed = list(itertools.islice(epoch_orders(examples, 8, 42, buckets, start_epoch=1), 2))
    assert resumed == straight[1:]
    assert straight[0] != straight[1] != straight[2]
