"""textclf.data and train.data: reading labelled TSV files in either column order, and the errors that name file:line."""
from pathlib import Path

import pytest

from conftest import ROOT, toy_lines, write_toy_dataset
from textclf.errors import DataError
from textclf.data import read_examples
from train.data import load_dataset

TEXT_LABEL = "play some jazz\tmusic\nwill it rain today\tweather\nput on my rock playlist\tmusic\n"
LABEL_TEXT = "music\tplay some jazz\nweather\twill it rain today\nmusic\tput on my rock playlist\n"


def write(folder, name, content):
    path = Path(folder) / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def pairs(examples):
    return [(e.text, e.label) for e in examples]


EXPECTED = [("play some jazz", "music"), ("will it rain today", "weather"), ("put on my rock playlist", "music")]


@pytest.mark.parametrize("content, columns", [(TEXT_LABEL, "text-label"), (LABEL_TEXT, "label-text")])
def test_column_order_is_detected(tmp_path, content, columns):
    examples, used = read_examples(write(tmp_path, "train.txt", content))
    assert used == columns
    assert pairs(examples) == EXPECTED
    assert [e.line for e in examples] == [1, 2, 3]


def test_columns_override_wins_over_detection(tmp_path):
    # Two distinct values in each column: detection cannot decide, the flag can.
    path = write(tmp_path, "train.txt", "music\tplay some jazz\nweather\twill it rain today\n")
    examples, used = read_examples(path, "label-text")
    assert used == "label-text"
    assert pairs(examples) == [("play some jazz", "music"), ("will it rain today", "weather")]
    examples, used = read_examples(path, "text-label")
    assert pairs(examples) == [("music", "play some jazz"), ("weather", "will it rain today")]


def test_ambiguous_columns_ask_for_the_flag(tmp_path):
    path = write(tmp_path, "train.txt", "music\tplay some jazz\nweather\twill it rain today\n")
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert str(path) in str(err.value)
    assert "--columns" in str(err.value)


def test_unknown_columns_value_is_refused(tmp_path):
    with pytest.raises(ValueError, match="columns must be one of"):
        read_examples(write(tmp_path, "train.txt", TEXT_LABEL), "text,label")


def test_crlf_bom_blank_lines_and_spaces_before_the_tab(tmp_path):
    content = (b"\xef\xbb\xbfplay some jazz \tmusic\r\n"
               b"\r\n"
               b"   \r\n"
               b"will it rain today\t weather\r\n"
               b"\n"
               b"put on my rock playlist\tmusic\r\n")
    examples, used = read_examples(write(tmp_path, "train.txt", content))
    assert used == "text-label"
    assert pairs(examples) == EXPECTED       # no BOM, no \r, no stray spaces
    assert [e.line for e in examples] == [1, 4, 6]   # physical line numbers, blank lines counted


def test_non_ascii_text_is_kept(tmp_path):
    content = "add to the clásicos playlist\tmusic\nrain in Zürich\tweather\nmore jazz\tmusic\n"
    path = write(tmp_path, "train.txt", content)
    assert read_examples(path)[0][0].text == "add to the clásicos playlist"


@pytest.mark.parametrize("bad_line, found", [("no tab on this line", 1), ("one\ttab\ttoo many", 3)])
def test_wrong_number_of_fields_names_file_and_line(tmp_path, bad_line, found):
    path = write(tmp_path, "train.txt", TEXT_LABEL + "\n" + bad_line + "\n")
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert f"{path}:5:" in str(err.value)
    assert "expected 2 tab-separated fields" in str(err.value)
    assert f"found {found}" in str(err.value)
    assert (err.value.path, err.value.line) == (str(path), 5)


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path, "train.txt", b"play some jazz\tmusic\nwill it \xff\xfe rain\tweather\n")
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert f"{path}:2:" in str(err.value)
    assert "UTF-8" in str(err.value)


@pytest.mark.parametrize("line, problem", [("\tmusic", "text is empty"), ("   \tmusic", "text is empty"),
                                           ("play some blues\t ", "label is empty")])
def test_empty_text_or_label_names_the_line(tmp_path, line, problem):
    path = write(tmp_path, "train.txt", TEXT_LABEL + line + "\n")
    with pytest.raises(DataError) as err:
        read_examples(path, "text-label")
    assert f"{path}:4:" in str(err.value)
    assert problem in str(err.value)


def test_skip_empty_drops_textless_lines_and_names_them(tmp_path, caplog):
    path = write(tmp_path, "train.tsv", "music\tplay some blues\nweather\t\nmusic\t  \nweather\train in paris\n")
    with pytest.raises(DataError, match=f"{path}:2: the text is empty"):
        read_examples(path, "label-text")
    with caplog.at_level("WARNING"):
        examples, _ = read_examples(path, "label-text", skip_empty=True)
    assert [(e.text, e.label, e.line) for e in examples] == [("play some blues", "music", 1),
                                                             ("rain in paris", "weather", 4)]
    assert f"{path}: skipped 2 line(s) with an empty text (line 2, 3)" in caplog.text
    only_empty = write(tmp_path, "valid.tsv", "music\t\n")
    with pytest.raises(DataError, match="holds no examples with a text"):
        read_examples(only_empty, "label-text", skip_empty=True)


def test_empty_file_holds_no_examples(tmp_path):
    path = write(tmp_path, "train.txt", "\n\r\n  \n")
    with pytest.raises(DataError, match="holds no examples"):
        read_examples(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_examples(tmp_path / "nope.txt")


# ---- load_dataset: splits, labels, seeded valid split, limit

def test_toy_dataset_loads(toy_data_dir):
    data = load_dataset(toy_data_dir)
    assert (len(data.train), len(data.valid), len(data.test)) == (60, 30, 30)
    assert data.labels == ["food", "music", "weather"]
    assert data.columns == "text-label"
    assert not data.valid_from_train


@pytest.mark.parametrize("split", ["valid", "test"])
def test_label_unseen_in_train_names_file_and_line(tmp_path, split):
    folder = write_toy_dataset(tmp_path / "data")
    lines = toy_lines(split)
    lines[3] = "book a flight to paris\ttravel"
    path = write(folder, f"{split}.txt", "\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_dataset(folder)
    assert f"{path}:4:" in str(err.value)
    assert "'travel'" in str(err.value) and "train.txt" in str(err.value)


def test_valid_and_test_use_the_train_column_order(tmp_path):
    folder = write_toy_dataset(tmp_path / "data", splits=("train",))
    flipped = [f"{label}\t{text}" for text, label in (line.split("\t") for line in toy_lines("valid"))]
    write(folder, "valid.txt", "\n".join(flipped) + "\n")
    with pytest.raises(DataError):   # labels read as texts: the "labels" are unseen sentences
        load_dataset(folder)


def test_missing_valid_is_a_seeded_split_of_train(tmp_path):
    folder = write_toy_dataset(tmp_path / "data", splits=("train", "test"))
    a = load_dataset(folder, valid_fraction=0.1, seed=1)
    b = load_dataset(folder, valid_fraction=0.1, seed=1)
    c = load_dataset(folder, valid_fraction=0.1, seed=2)
    assert a.valid_from_train
    assert (len(a.train), len(a.valid)) == (54, 6)
    assert pairs(a.valid) == pairs(b.valid) and pairs(a.train) == pairs(b.train)
    assert pairs(a.valid) != pairs(c.valid)
    everything = sorted(pairs(read_examples(folder / "train.txt")[0]))
    assert sorted(pairs(a.train) + pairs(a.valid)) == everything
    assert not set(pairs(a.train)) & set(pairs(a.valid))


def test_limit_keeps_the_first_training_examples(toy_data_dir):
    full = load_dataset(toy_data_dir)
    data = load_dataset(toy_data_dir, limit=7)
    assert pairs(data.train) == pairs(full.train)[:7]
    assert len(data.valid) == 30 and len(data.test) == 30
    assert data.labels == full.labels   # labels come from the whole training file


def test_missing_train_file(tmp_path):
    with pytest.raises(DataError, match="no train.txt or train.tsv"):
        load_dataset(tmp_path)


def test_two_train_files_are_refused(tmp_path):
    write(tmp_path, "train.txt", TEXT_LABEL)
    write(tmp_path, "train.tsv", TEXT_LABEL)
    with pytest.raises(DataError, match="more than one train file"):
        load_dataset(tmp_path)


def test_a_single_label_is_refused(tmp_path):
    write(tmp_path, "train.txt", "play some jazz\tmusic\nplay some blues\tmusic\nmore rock\tmusic\n")
    with pytest.raises(DataError, match="at least 2 labels"):
        load_dataset(tmp_path)


def test_snips_reads_cleanly():
    data = load_dataset(ROOT / "data" / "snips")
    assert (len(data.train), len(data.valid), len(data.test)) == (13084, 700, 700)
    assert data.labels == ["AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook",
                           "SearchCreativeWork", "SearchScreeningEvent"]
    assert data.columns == "text-label"
    assert not data.valid_from_train
    for e in data.train[:50] + data.test[:50]:
        assert e.text == e.text.strip() and "\r" not in e.text and "\t" not in e.text


def test_mixsnips_reads_cleanly_as_multi_label():
    data = load_dataset(ROOT / "data" / "mixsnips", multi_label=True)
    assert (len(data.train), len(data.valid), len(data.test)) == (6000, 500, 700)
    assert data.labels == load_dataset(ROOT / "data" / "snips").labels
    assert data.columns == "text-label" and data.multi_label and not data.valid_from_train
    for e in data.train + data.valid + data.test:
        assert isinstance(e.label, tuple) and 2 <= len(e.label) <= 3 and e.label == tuple(sorted(set(e.label)))
