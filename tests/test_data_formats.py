"""textclf.data and train.data beyond single-label TSV: JSON Lines and CSV, multi-label examples, and the
MixSNIPS builder (data/build_mixsnips.py). Fast: no models."""
import csv
import importlib.util
import io
import json
import logging
from pathlib import Path

import pytest
from conftest import ROOT

from textclf.data import Example, find_split, label_set, read_examples
from textclf.errors import DataError
from train.data import label_counts, load_dataset

SINGLE = [("play some jazz", "music"), ('will it rain, "today"', "weather"), ("put on my rock playlist", "music")]
MULTI = [("play jazz and tell me the weather", ("music", "weather")), ("play some rock", ("music",)),
         ("rain, and a pizza", ("food", "weather"))]
NO_LABEL = "the label is empty (--allow-no-label keeps such lines as examples with no label)"


def write(folder, name, content):
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def as_csv(rows):
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def jsonl(*objects):
    return "".join(json.dumps(o) + "\n" for o in objects)


def pairs(examples):
    return [(e.text, e.label) for e in examples]


def messy(labels):
    """The labels of a multi-label example as a messy field: reversed, spaced, one repeated."""
    return " , ".join(list(reversed(labels)) + [labels[0]])


# The same examples in every format; CSV has its header on line 1 and an ignored column first.
SINGLE_FILES = {
    "tsv": ("train.tsv", "".join(f"{t}\t{l}\n" for t, l in SINGLE), [1, 2, 3]),
    "jsonl label": ("train.jsonl", jsonl(*({"text": t, "label": l} for t, l in SINGLE)), [1, 2, 3]),
    "ndjson labels": ("train.ndjson", jsonl(*({"id": i, "text": t, "labels": [l]} for i, (t, l) in enumerate(SINGLE))),
                      [1, 2, 3]),
    "csv label": ("train.csv", as_csv([["id", "text", "label"]] + [[i, t, l] for i, (t, l) in enumerate(SINGLE)]),
                  [2, 3, 4]),
    "csv labels": ("train.csv", as_csv([["labels", "text"]] + [[l, t] for t, l in SINGLE]), [2, 3, 4]),
}
MULTI_FILES = {
    "tsv": ("train.txt", "".join(f"{t}\t{messy(l)}\n" for t, l in MULTI), [1, 2, 3]),
    "jsonl label": ("train.jsonl", jsonl(*({"text": t, "label": messy(l)} for t, l in MULTI)), [1, 2, 3]),
    "jsonl labels": ("train.jsonl", jsonl(*({"text": t, "labels": list(reversed(l)) + [" "]} for t, l in MULTI)),
                     [1, 2, 3]),
    "csv label": ("train.csv", as_csv([["text", "label", "source"]] + [[t, messy(l), "x"] for t, l in MULTI]),
                  [2, 3, 4]),
    "csv labels": ("train.csv", as_csv([["text", "labels"]] + [[t, messy(l)] for t, l in MULTI]), [2, 3, 4]),
}


@pytest.mark.parametrize("kind", SINGLE_FILES)
def test_every_format_reads_the_same_single_label_examples(tmp_path, kind):
    name, content, lines = SINGLE_FILES[kind]
    examples, _ = read_examples(write(tmp_path, name, content))
    assert pairs(examples) == SINGLE
    assert [e.line for e in examples] == lines
    assert all(isinstance(e.label, str) for e in examples)


@pytest.mark.parametrize("kind", MULTI_FILES)
def test_every_format_reads_the_same_multi_label_examples(tmp_path, kind):
    name, content, lines = MULTI_FILES[kind]
    examples, _ = read_examples(write(tmp_path, name, content), "text-label", multi_label=True)   # TSV only
    assert pairs(examples) == MULTI    # split, stripped, de-duplicated, sorted, empty pieces dropped
    assert [e.line for e in examples] == lines
    assert all(isinstance(e, Example) and isinstance(e.label, tuple) for e in examples)
    assert [label_set(e) for e in examples] == [l for _, l in MULTI]


def test_label_set_of_a_single_label_example():
    assert label_set(Example("play jazz", "music", 1)) == ("music",)
    assert label_set(Example("play jazz", ("music", "weather"), 1)) == ("music", "weather")


@pytest.mark.parametrize("name", ["train.jsonl", "train.csv"])
def test_bom_crlf_and_blank_lines_in_jsonl_and_csv(tmp_path, name):
    if name.endswith(".jsonl"):
        body = ['{"text": " play some jazz ", "label": "music"}', "", "  ",
                '{"text": "will it rain, \\"today\\"", "label": " weather"}', "",
                '{"text": "put on my rock playlist", "label": "music"}']
        lines = [1, 4, 6]
    else:
        body = ["text,label", "", " play some jazz ,music", "  ", '"will it rain, ""today""", weather', "",
                "put on my rock playlist,music"]
        lines = [3, 5, 7]
    content = b"\xef\xbb\xbf" + "\r\n".join(body).encode("utf-8") + b"\r\n"
    examples, _ = read_examples(write(tmp_path, name, content))
    assert pairs(examples) == SINGLE
    assert [e.line for e in examples] == lines


def test_csv_records_across_lines_are_numbered_by_their_first_line(tmp_path):
    path = write(tmp_path, "train.csv", 'text,label\n"play some\njazz, now",music\n\n"rain\r\n\r\ntoday",weather\n'
                                        "one,two,three\n")
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert f"{path}:8: expected 2 comma-separated fields" in str(err.value)
    assert "found 3" in str(err.value)
    path = write(tmp_path, "ok.csv", 'text,label\n"play some\njazz, now",music\n\n"rain\r\n\r\ntoday",weather\n')
    examples, _ = read_examples(path)
    assert [(e.text, e.label, e.line) for e in examples] == [("play some\njazz, now", "music", 2),
                                                             ("rain\n\ntoday", "weather", 5)]


def test_columns_applies_to_tsv_only(tmp_path):
    name, content, _ = SINGLE_FILES["csv label"]
    examples, used = read_examples(write(tmp_path, name, content), "label-text")
    assert pairs(examples) == SINGLE and used == "label-text"
    name, content, _ = SINGLE_FILES["jsonl label"]
    examples, used = read_examples(write(tmp_path, name, content))
    assert pairs(examples) == SINGLE and used == "auto"


GOOD_JSON = '{"text": "play some jazz", "label": "music"}\n\n'   # lines 1-2: the bad line is line 3
JSON_CASES = [
    ('{"text": "rain", "label": "weather"', False, "not valid JSON"),
    ('["rain", "weather"]', False, "expected a JSON object, found array"),
    ('"rain"', False, "expected a JSON object, found string"),
    ('{"label": "weather"}', False, "no 'text' field"),
    ('{"text": 3, "label": "weather"}', False, "'text' is not a string but number"),
    ('{"text": null, "labels": ["weather"]}', True, "no 'text' field"),
    ('{"text": ["rain"], "label": "weather"}', True, "'text' is not a string but array"),
    ('{"text": "  ", "label": "weather"}', False, "the text is empty"),
    ('{"text": "rain", "label": 1}', False, "'label' is not a string but number"),
    ('{"text": "rain", "label": null}', True, "'label' is not a string but null"),
    ('{"text": "rain", "label": ["weather"]}', True, "'label' is not a string but array"),
    ('{"text": "rain", "labels": "weather"}', False, "'labels' is not a list of strings"),
    ('{"text": "rain", "labels": ["weather", 2]}', True, "'labels' is not a list of strings"),
    ('{"text": "rain", "label": "weather", "labels": ["weather"]}', True, "both 'label' and 'labels'"),
    ('{"text": "rain"}', True, "no 'label' or 'labels' field"),
    ('{"text": "rain", "label": " "}', False, "the label is empty"),
    ('{"text": "rain", "labels": []}', False, "the label is empty"),
    ('{"text": "rain", "labels": ["weather", "music"]}', False, "several labels: train with --multi-label"),
    ('{"text": "rain", "labels": []}', True, NO_LABEL),
    ('{"text": "rain", "label": " , "}', True, NO_LABEL),
]


@pytest.mark.parametrize("line, multi_label, problem", JSON_CASES)
def test_bad_jsonl_names_file_and_line(tmp_path, line, multi_label, problem):
    path = write(tmp_path, "train.jsonl", GOOD_JSON + line + "\n" + GOOD_JSON)
    with pytest.raises(DataError) as err:
        read_examples(path, multi_label=multi_label)
    assert f"{path}:3: " in str(err.value)
    assert problem in str(err.value)
    assert (err.value.path, err.value.line) == (str(path), 3)


CSV_CASES = [   # (content, line, problem)
    ("sentence,label\nrain,weather\n", 1, "the header has no 'text' column"),
    ("\n\ntext,intent\nrain,weather\n", 3, "the header has no 'label' or 'labels' column (columns: 'text', 'intent')"),
    ("text,label,labels\nrain,weather,weather\n", 1, "both a 'label' and a 'labels' column"),
    ("text,label,text\nrain,weather,rain\n", 1, "names the column 'text' more than once"),
    ("text,label\nrain,weather\njazz\n", 3, "expected 2 comma-separated fields (as in the header), found 1"),
    ("text,label\nrain,weather\n\"jazz\" now,music\n", 3, "malformed CSV record"),
    ("text,label\nrain,weather\n  ,music\n", 3, "the text is empty (--skip-empty drops such lines)"),
    ("text,label\nrain,weather\njazz, \n", 3, "the label is empty"),
    ("text,labels\nrain,weather\n\"jazz\",\"music,weather\"\n", 3, "several labels: train with --multi-label"),
    (b"text,label\nrain,weather\nja\xffzz,music\n", 3, "not valid UTF-8"),
]


@pytest.mark.parametrize("content, line, problem", CSV_CASES)
def test_bad_csv_names_file_and_line(tmp_path, content, line, problem):
    path = write(tmp_path, "train.csv", content)
    multi = "several" not in problem and "label is empty" not in problem
    with pytest.raises(DataError) as err:
        read_examples(path, multi_label=False)
    assert f"{path}:{line}: " in str(err.value)
    assert problem in str(err.value)
    if multi:   # the same error in multi-label mode
        with pytest.raises(DataError, match=f"{path}:{line}: "):
            read_examples(path, multi_label=True)


def test_single_label_csv_label_keeps_commas_a_labels_cell_is_split(tmp_path):
    # A "label" cell is kept whole when single-label, split when multi-label; a "labels" cell is always split.
    path = write(tmp_path, "train.csv", 'text,label\nrain and jazz,"weather,music"\n')
    assert pairs(read_examples(path)[0]) == [("rain and jazz", "weather,music")]
    assert pairs(read_examples(path, multi_label=True)[0]) == [("rain and jazz", ("music", "weather"))]
    path = write(tmp_path, "train.csv", 'text,labels\nrain,"weather, "\njazz,music;rock\n')
    assert pairs(read_examples(path)[0]) == [("rain", "weather"), ("jazz", "music;rock")]
    assert pairs(read_examples(path, multi_label=True, separator=";")[0]) == [("rain", ("weather,",)),
                                                                              ("jazz", ("music", "rock"))]


@pytest.mark.parametrize("name, content", [("train.jsonl", "\n \n"), ("train.csv", "\n\n"),
                                           ("train.csv", "text,label\n\n")])
def test_files_without_records_hold_no_examples(tmp_path, name, content):
    with pytest.raises(DataError, match="holds no examples"):
        read_examples(write(tmp_path, name, content))


def test_skip_empty_applies_to_jsonl_and_csv(tmp_path, caplog):
    path = write(tmp_path, "train.jsonl", jsonl({"text": "rain", "labels": ["weather"]},
                                                {"text": "", "labels": ["music"]}))
    with caplog.at_level("WARNING"):
        examples, _ = read_examples(path, skip_empty=True, multi_label=True)
    assert pairs(examples) == [("rain", ("weather",))]
    assert f"{path}: skipped 1 line(s) with an empty text (line 2)" in caplog.text
    path = write(tmp_path, "train.csv", "text,label\n,music\nrain,weather\n")
    assert [(e.text, e.line) for e in read_examples(path, skip_empty=True)[0]] == [("rain", 3)]


# ---- multi-label TSV: empty labels, allow_no_label, separator

def test_multi_label_tsv_empty_label_needs_allow_no_label(tmp_path):
    content = "play jazz and rain\tmusic,weather\nhello there\t , \nplay rock\tmusic\nhi\t\n"
    path = write(tmp_path, "train.tsv", content)
    with pytest.raises(DataError) as err:
        read_examples(path, "text-label", multi_label=True)
    assert str(err.value) == f"{path}:2: {NO_LABEL}"
    examples, _ = read_examples(path, "text-label", multi_label=True, allow_no_label=True)
    assert [(e.text, e.label, e.line) for e in examples] == [
        ("play jazz and rain", ("music", "weather"), 1), ("hello there", (), 2), ("play rock", ("music",), 3),
        ("hi", (), 4)]
    single = write(tmp_path, "single.tsv", "play rock\tmusic\nhello there\t \n")
    with pytest.raises(DataError, match=f"{single}:2: the label is empty$"):   # single-label: the old message
        read_examples(single, "text-label")


def test_the_separator_is_a_choice(tmp_path):
    path = write(tmp_path, "train.tsv", "play jazz and rain\tmusic; weather\nplay rock\tmusic\nrain\tweather\n")
    assert [e.label for e in read_examples(path, "text-label", multi_label=True, separator=";")[0]] == \
        [("music", "weather"), ("music",), ("weather",)]
    assert [e.label for e in read_examples(path, "text-label", multi_label=True)[0]] == \
        [("music; weather",), ("music",), ("weather",)]
    jsonl_path = write(tmp_path, "train.jsonl", jsonl({"text": "rain", "label": "weather|music"},
                                                      {"text": "rock", "labels": ["music|rock"]}))
    assert pairs(read_examples(jsonl_path, multi_label=True, separator="|")[0]) == [
        ("rain", ("music", "weather")), ("rock", ("music|rock",))]   # a "labels" list is not split


def test_single_label_tsv_keeps_labels_with_commas(tmp_path):
    path = write(tmp_path, "train.tsv", "play jazz and rain\tGetWeather,PlayMusic\nplay rock\tPlayMusic\n"
                                        "rain\tGetWeather\nsnow\tGetWeather\n")
    assert [e.label for e in read_examples(path)[0]] == ["GetWeather,PlayMusic", "PlayMusic", "GetWeather",
                                                         "GetWeather"]


def test_bad_arguments_are_refused(tmp_path):
    path = write(tmp_path, "train.tsv", "play rock\tmusic\nrain\tweather\nmore rain\tweather\n")
    with pytest.raises(ValueError, match="allow_no_label"):
        read_examples(path, allow_no_label=True)
    with pytest.raises(ValueError, match="separator"):
        read_examples(path, multi_label=True, separator="")


# ---- find_split

@pytest.mark.parametrize("name", ["train.jsonl", "train.ndjson", "train.csv", "train.tsv", "train.txt"])
def test_find_split_finds_every_format(tmp_path, name):
    write(tmp_path, name, "x")
    write(tmp_path, "train.json", "x")      # not a data format: ignored
    write(tmp_path, "valid.csv.bak", "x")
    assert find_split(tmp_path, "train", True) == tmp_path / name
    assert find_split(tmp_path, "valid", False) is None


def test_find_split_refuses_two_candidates_and_names_the_formats(tmp_path):
    write(tmp_path, "train.jsonl", "x")
    write(tmp_path, "train.csv", "x")
    with pytest.raises(DataError, match="more than one train file: train.csv, train.jsonl"):
        find_split(tmp_path, "train", True)
    with pytest.raises(DataError, match=r"no test.txt or test.tsv here \(nor test.jsonl, test.ndjson or test.csv\)"):
        find_split(tmp_path, "test", True)


# ---- load_dataset

def multi_label_folder(folder):
    write(folder, "train.txt", "play jazz and rain\tmusic,weather\nplay rock\tmusic\nbake bread\tfood\n"
                               "hello\t\nrain\tweather\nplay pop\tmusic\n")
    write(folder, "valid.jsonl", jsonl({"text": "pizza and jazz", "labels": ["food", "music"]},
                                       {"text": "snow", "label": "weather"}))
    write(folder, "test.csv", 'text,labels\n"jazz, rain",\"weather,music"\nsoup,food\n')
    return folder


def test_load_dataset_multi_label_across_formats(tmp_path):
    folder = multi_label_folder(tmp_path / "data")
    with pytest.raises(DataError, match=f"{folder / 'train.txt'}:4: the label is empty"):
        load_dataset(folder, multi_label=True)
    data = load_dataset(folder, multi_label=True, allow_no_label=True)
    assert data.labels == ["food", "music", "weather"]
    assert data.multi_label and not data.valid_from_train and data.columns == "text-label"
    assert pairs(data.train) == [("play jazz and rain", ("music", "weather")), ("play rock", ("music",)),
                                 ("bake bread", ("food",)), ("hello", ()), ("rain", ("weather",)),
                                 ("play pop", ("music",))]
    assert pairs(data.valid) == [("pizza and jazz", ("food", "music")), ("snow", ("weather",))]
    assert pairs(data.test) == [("jazz, rain", ("music", "weather")), ("soup", ("food",))]
    assert label_counts(data.train) == {"music": 3, "weather": 2, "food": 1}


def test_load_dataset_single_label_keeps_label_counts(toy_data_dir):
    data = load_dataset(toy_data_dir)
    assert not data.multi_label
    assert label_counts(data.train) == {"food": 20, "music": 20, "weather": 20}


@pytest.mark.parametrize("split, name, content, line", [
    ("valid", "valid.jsonl",
     jsonl({"text": "snow", "label": "weather"}, {"text": "fly", "labels": ["travel", "music"]}), 2),
    ("test", "test.csv", 'text,labels\nsoup,food\n\n"fly to rome, play jazz","music,travel"\n', 4),
])
def test_multi_label_unseen_in_train_names_file_line_and_label(tmp_path, split, name, content, line):
    folder = multi_label_folder(tmp_path / "data")
    for old in folder.glob(f"{split}.*"):
        old.unlink()
    path = write(folder, name, content)
    with pytest.raises(DataError) as err:
        load_dataset(folder, multi_label=True, allow_no_label=True)
    assert str(err.value) == f"{path}:{line}: label 'travel' never occurs in train.txt"


def test_multi_label_needs_two_labels_overall(tmp_path):
    write(tmp_path, "train.jsonl", jsonl({"text": "jazz", "labels": ["music"]}, {"text": "hi", "labels": []},
                                         {"text": "rock", "label": "music,music"}))
    with pytest.raises(DataError, match="needs at least 2 labels, found 1"):
        load_dataset(tmp_path, multi_label=True, allow_no_label=True)


def test_load_dataset_reads_a_jsonl_folder_single_label(tmp_path):
    write(tmp_path, "train.ndjson", jsonl(*({"text": t, "label": l} for t, l in SINGLE)))
    write(tmp_path, "test.tsv", "jazz\tmusic\nsnow\tweather\nrock\tmusic\n")       # its own column order is detected
    data = load_dataset(tmp_path, valid_fraction=0.34)
    assert data.labels == ["music", "weather"] and data.valid_from_train and data.columns == "auto"
    assert sorted(pairs(data.train + data.valid)) == sorted(SINGLE)
    assert pairs(data.test) == [("jazz", "music"), ("snow", "weather"), ("rock", "music")]


def test_labels_with_commas_warn_once_per_file_in_single_label_mode(tmp_path, caplog):
    write(tmp_path, "train.txt", "play jazz and rain\tGetWeather,PlayMusic\nplay rock\tPlayMusic\n"
                                 "rain\tGetWeather\nrock and snow\tGetWeather,PlayMusic\n")
    write(tmp_path, "test.csv", 'text,label\nrain and jazz,"GetWeather,PlayMusic"\nrock,PlayMusic\n')
    with caplog.at_level(logging.WARNING, logger="train.data"):
        data = load_dataset(tmp_path)
    assert data.labels == ["GetWeather", "GetWeather,PlayMusic", "PlayMusic"]   # only a warning
    warning = ("labels such as 'GetWeather,PlayMusic' look like several labels: pass --multi-label to train a "
               "multi-label model")
    messages = [r.getMessage() for r in caplog.records if "look like several labels" in r.getMessage()]
    assert messages == [f"{tmp_path / 'train.txt'}: {warning}", f"{tmp_path / 'test.csv'}: {warning}"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.data"):
        data = load_dataset(tmp_path, multi_label=True)
    assert data.labels == ["GetWeather", "PlayMusic"]
    assert "look like several labels" not in caplog.text


# ---- the MixSNIPS builder

def builder():
    spec = importlib.util.spec_from_file_location("build_mixsnips", ROOT / "data" / "build_mixsnips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL = {"train": 300, "valid": 60, "test": 80}


def test_mixsnips_build_is_deterministic(tmp_path):
    build = builder().build
    build(ROOT / "data" / "snips", tmp_path / "a", SMALL)
    build(ROOT / "data" / "snips", tmp_path / "b", SMALL)
    for split, n in SMALL.items():
        a = (tmp_path / "a" / f"{split}.txt").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.txt").read_bytes()
        assert a.count(b"\n") == n and b"\r" not in a and " \t" not in a.decode("utf-8")


def test_mixsnips_labels_are_the_intents_of_the_parts(tmp_path):
    module = builder()
    built = module.build(ROOT / "data" / "snips", tmp_path, SMALL)
    for split, examples in built.items():
        snips = {}
        for e in read_examples(ROOT / "data" / "snips" / f"{split}.txt")[0]:
            snips.setdefault(e.label, set()).add(e.text)
        read = read_examples(tmp_path / f"{split}.txt", multi_label=True)[0]
        assert len(read) == len(examples) == SMALL[split]
        sizes = set()
        for (text, labels, parts), example in zip(examples, read):
            intents = [intent for intent, _ in parts]
            assert example.text == text and example.label == labels == tuple(sorted(intents))
            assert len(set(intents)) == len(intents) in (2, 3)
            sizes.add(len(intents))
            for intent, utterance in parts:
                assert utterance in snips[intent]    # drawn from the same Snips split, under its own intent
            rest = text[len(parts[0][1]):]
            assert text.startswith(parts[0][1])
            for _, utterance in parts[1:]:
                connector = next(c for c in module.CONNECTORS if rest.startswith(c + utterance))
                rest = rest[len(connector + utterance):]
            assert rest == ""
        assert sizes == {2, 3}


def test_committed_mixsnips_is_what_the_builder_writes(tmp_path):
    builder().build(ROOT / "data" / "snips", tmp_path)
    for split in ("train", "valid", "test"):
        assert (tmp_path / f"{split}.txt").read_bytes() == (ROOT / "data" / "mixsnips" / f"{split}.txt").read_bytes()
