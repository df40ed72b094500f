"""benchmarks/open_set.py: the leave-two-out protocol, once or over several pairs, on a small four-intent set."""
import json
import random

import pytest

from benchmarks import open_set

WORDS = {label: [f"{label}{i}" for i in range(12)] for label in ("alpha", "bravo", "charlie", "delta")}


@pytest.fixture
def four_intents(tmp_path):
    rng = random.Random(0)
    folder = tmp_path / "data"
    folder.mkdir()
    for split, n in (("train", 30), ("valid", 10), ("test", 10)):
        lines = [f"{' '.join(rng.sample(words, 4))}\t{label}" for label, words in WORDS.items() for _ in range(n)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def toy_model(monkeypatch):
    monkeypatch.setattr(open_set, "MODELS", {"toy": ["--embedding", "random", "--encoder", "cnn", "--embedding-dim",
                                                     "16", "--num-filters", "8", "--epochs", "2", "--batch-size", "8",
                                                     "--threads", "1"]})


def run(tmp_path, data, *extra):
    return open_set.main(["--data", str(data), "--models", "toy", "--far", "20", "--runs", str(tmp_path / "runs"),
                          "--out", str(tmp_path / "out"), *extra])


def test_pairs_are_the_drawn_one_first_then_distinct_others(four_intents):
    labels = sorted(WORDS)
    args = open_set.parse_args(["--pairs", "all", "--seed", "3"])
    pairs = open_set.choose_pairs(labels, args)
    assert pairs[0] == sorted(random.Random(3).sample(labels, 2))
    assert sorted(map(tuple, pairs)) == sorted((a, b) for i, a in enumerate(labels) for b in labels[i + 1:])
    for n in range(1, 7):                              # --pairs N is the first N of --pairs all
        assert open_set.choose_pairs(labels, open_set.parse_args(["--pairs", str(n), "--seed", "3"])) == pairs[:n]
    assert open_set.choose_pairs(labels, open_set.parse_args(["--leave-out", "delta,alpha"]))[0] == ["alpha", "delta"]
    with pytest.raises(SystemExit, match="between 1 and 6"):
        open_set.choose_pairs(labels, open_set.parse_args(["--pairs", "7"]))


def test_every_pair_is_trained_without_its_intents_and_summarised(tmp_path, four_intents, toy_model):
    assert run(tmp_path, four_intents, "--pairs", "all") == 0
    record = json.loads((tmp_path / "out" / "open_set.json").read_text())
    per_pair = record["pairs"]["per_pair"]
    assert len(per_pair) == 6 and list(per_pair)[0] == "+".join(record["leave_out"])
    for pair in per_pair:
        folder = tmp_path / "runs" if pair == list(per_pair)[0] else tmp_path / "runs" / "pairs" / pair
        trained = {line.split("\t")[1] for line in (folder / "data" / "train.txt").read_text().splitlines()}
        assert trained == set(WORDS) - set(pair.split("+"))
        assert json.loads((folder / "toy" / "checkpoint-best" / "labels.json").read_text()) == sorted(trained)
    near = [r["toy"]["scores"]["energy"]["near"]["auroc"] for r in per_pair.values()]
    mean = record["pairs"]["mean"]["toy"]["energy"]
    assert mean["near_auroc_mean"] == pytest.approx(sum(near) / 6)
    assert mean["near_auroc_min"] == min(near)
    assert per_pair[mean["worst_pair"]]["toy"]["scores"]["energy"]["near"]["auroc"] == min(near)
    text = (tmp_path / "out" / "open_set.md").read_text()
    assert "## Pair by pair (6 of the 6 pairs)" in text and mean["worst_pair"].replace("+", " + ") in text
    assert (tmp_path / "out" / "pairs.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "out" / "coverage-toy.png").read_bytes().startswith(b"\x89PNG")
    assert "coverage_curves" in record["results"]["toy"]                 # the first pair keeps its curves

    (tmp_path / "out" / "pairs.png").unlink()
    weights = tmp_path / "runs" / "toy" / "checkpoint-best" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert run(tmp_path, four_intents) == 0                               # one pair: no pair table, nothing retrained
    assert weights.stat().st_mtime_ns == stamp
    assert "Pair by pair" not in (tmp_path / "out" / "open_set.md").read_text()
    assert not (tmp_path / "out" / "pairs.png").exists()


def test_mixsnips_errors_sorts_each_wrong_text_by_where_it_went_wrong(tmp_path):
    """benchmarks/mixsnips_errors.py on the committed test mixes, with answers fixed by rule: the multi-label side
    drops GetWeather wherever it occurs and the single-label side misreads every utterance that starts with
    "play" as SearchCreativeWork, so every count can be worked out from the data."""
    from benchmarks import mixsnips_errors

    mixes = mixsnips_errors.read_test_mixes(open_set.ROOT / "data" / "snips", open_set.ROOT / "data" / "mixsnips")
    assert len(mixes) == 700

    class Multi:
        labels = ["AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook", "SearchCreativeWork",
                  "SearchScreeningEvent"]

        def predict(self, texts, top_k):
            assert top_k == 7                          # every label's score goes into the report
            gold = {text: labels for text, labels, _ in mixes}
            return [{"labels": [{"label": x, "score": 0.9} for x in gold[t] if x != "GetWeather"],
                     "top_k": [{"label": x, "score": 0.9} for x in gold[t]]} for t in texts]

    class Single:
        def predict(self, texts, top_k=1):
            intent = {u: i for _, _, parts in mixes for i, u in parts}
            return [{"label": "SearchCreativeWork" if t.startswith("play") else intent[t]} for t in texts]

    summary, wrong = mixsnips_errors.analyse(Multi(), Single(), mixes)
    with_weather = [m for m in mixes if "GetWeather" in m[1]]
    misread = [m for m in mixes if any(u.startswith("play") and i != "SearchCreativeWork" for i, u in m[2])]
    assert summary["wrong"] == summary["missed"] == len(with_weather) and summary["extra"] == summary["swapped"] == 0
    assert summary["wrong_with_a_single_label_error"] == len([m for m in with_weather if m in misread])
    assert summary["texts_holding_a_single_label_error"] == len(misread)
    assert summary["single_label_equivalent_subset_accuracy"] == pytest.approx(1 - len(misread) / 700)
    assert all(w["predicted"] == [x for x in w["gold"] if x != "GetWeather"] for w in wrong)

    bad = tmp_path / "mixsnips"
    bad.mkdir()
    lines = (open_set.ROOT / "data" / "mixsnips" / "test.txt").read_text().splitlines()
    (bad / "test.txt").write_text("\n".join(lines[:4] + ["changed\tGetWeather"] + lines[5:]) + "\n")
    with pytest.raises(SystemExit, match=r"test.txt:5: not what data/build_mixsnips.py builds"):
        mixsnips_errors.read_test_mixes(open_set.ROOT / "data" / "snips", bad)
