"""python -m train.predict --input FILE --output FILE (train/bulk.py): every input format, results equal to
Predictor's, input order and line numbers, resume after an interruption, refusals, bad input, tokenize workers."""
import csv
import io
import json
import random

import pytest

from conftest import KEYWORDS, PROBE_TEXTS, run_failing_cli, toy_sentence
from textclf.predict import Predictor
from train import bulk
from train import predict as predict_cli

LABELS = sorted(KEYWORDS)


@pytest.fixture(scope="module")
def predictor(tiny_ckpt):
    return Predictor.from_checkpoint(tiny_ckpt)


def sample_texts(n, seed=0):
    """Toy sentences of every label, plus texts of very different lengths and scripts."""
    rng = random.Random(seed)
    texts = [toy_sentence(rng, rng.choice(LABELS)) for _ in range(n)]
    for i, probe in enumerate(PROBE_TEXTS):
        texts[(i * 37) % n] = probe.strip()   # line formats strip the text
    return texts


def run_bulk(ckpt, src, dst, *extra):
    return predict_cli.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(dst),
                             "--threads", "1", *extra])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_lines(path, lines, bom=False, newline="\n"):
    data = newline.join(lines) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return path


def assert_matches_predictor(records, texts, predictor, k=1):
    expected = predictor.predict(texts, top_k=k)
    assert [r["text"] for r in records] == texts
    for record, want in zip(records, expected):
        assert record["label"] == want["label"]
        assert record["score"] == pytest.approx(want["score"], abs=1e-5)
        if k > 1:
            assert [x["label"] for x in record["top_k"]] == [x["label"] for x in want["top_k"]]
            assert [x["score"] for x in record["top_k"]] == pytest.approx([x["score"] for x in want["top_k"]],
                                                                          abs=1e-5)
        else:
            assert "top_k" not in record


# ---- results and formats

@pytest.mark.parametrize("model", ["tiny_ckpt", "glove_cnn_ckpt"])
def test_results_equal_the_predictor_in_input_order(request, model, tmp_path, capfd):
    ckpt = request.getfixturevalue(model)
    predictor = Predictor.from_checkpoint(ckpt)
    texts = sample_texts(300)
    src = write_lines(tmp_path / "in.txt", texts)
    assert run_bulk(ckpt, src, tmp_path / "out.jsonl", "--chunk", "64", "--batch-size", "16", "--top-k", "3") == 0
    records = read_jsonl(tmp_path / "out.jsonl")
    assert [r["line"] for r in records] == list(range(1, 301))
    assert_matches_predictor(records, texts, predictor, k=3)
    err = capfd.readouterr().err
    assert "classified 300 texts in" in err and "(resumed after 0)" in err


def test_line_numbers_skip_blank_lines_crlf_and_bom(tiny_ckpt, predictor, tmp_path):
    lines = ["rain and snow", "", "  ", "play jazz", "", "bake bread"]
    src = write_lines(tmp_path / "in.txt", lines, bom=True, newline="\r\n")
    assert run_bulk(tiny_ckpt, src, tmp_path / "out.jsonl") == 0
    records = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["line"], r["text"]) for r in records] == [(1, "rain and snow"), (4, "play jazz"), (6, "bake bread")]
    assert_matches_predictor(records, ["rain and snow", "play jazz", "bake bread"], predictor)


def test_jsonl_input_with_another_field(tiny_ckpt, predictor, tmp_path):
    texts = ["rain tomorrow", "Café crème brûlée recipe", "a jazz album"]
    lines = [json.dumps({"id": i, "body": t}, ensure_ascii=False) for i, t in enumerate(texts)]
    src = write_lines(tmp_path / "in.ndjson", [lines[0], "", lines[1], lines[2]], bom=True, newline="\r\n")
    assert run_bulk(tiny_ckpt, src, tmp_path / "out.jsonl", "--field", "body") == 0
    records = read_jsonl(tmp_path / "out.jsonl")
    assert [r["line"] for r in records] == [1, 3, 4]
    assert_matches_predictor(records, texts, predictor)
    assert "Café crème brûlée" in (tmp_path / "out.jsonl").read_text(encoding="utf-8")   # ensure_ascii=False


def test_csv_input_with_quoted_line_breaks_to_tsv_output(tiny_ckpt, predictor, tmp_path):
    rows = [["id", "text"], ["1", "rain and\nsnow, then fog"], ["2", 'a "jazz"\tsong'], ["3", "bake bread"]]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows[:2] + [[], []] + rows[2:])
    src = tmp_path / "in.csv"
    src.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8"))
    assert run_bulk(tiny_ckpt, src, tmp_path / "out.tsv") == 0
    texts = [r[1] for r in rows[1:]]
    out = (tmp_path / "out.tsv").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0] for line in out] == ["2", "6", "7"]   # the first record spans lines 2-3
    for line, text, want in zip(out, texts, predictor.predict(texts)):
        _, label, score, flat = line.split("\t")
        assert (label, flat) == (want["label"], text.replace("\n", " ").replace("\t", " "))
        assert float(score) == pytest.approx(want["score"], abs=1e-5)


@pytest.mark.parametrize("order", ["text-label", "label-text"])
def test_two_column_tsv_finds_the_text_column(tiny_ckpt, predictor, tmp_path, order):
    texts = sample_texts(60)
    rows = [(t, LABELS[i % 3]) if order == "text-label" else (LABELS[i % 3], t) for i, t in enumerate(texts)]
    src = write_lines(tmp_path / "in.tsv", ["\t".join(r) for r in rows])
    assert run_bulk(tiny_ckpt, src, tmp_path / "out.jsonl") == 0
    assert_matches_predictor(read_jsonl(tmp_path / "out.jsonl"), texts, predictor)
    # forced, as --columns; a one-column TSV is the text alone
    assert run_bulk(tiny_ckpt, src, tmp_path / "forced.jsonl", "--columns", order) == 0
    assert read_jsonl(tmp_path / "forced.jsonl") == read_jsonl(tmp_path / "out.jsonl")
    one = write_lines(tmp_path / "one.tsv", texts[:5])
    assert run_bulk(tiny_ckpt, one, tmp_path / "one.jsonl") == 0
    assert_matches_predictor(read_jsonl(tmp_path / "one.jsonl"), texts[:5], predictor)


def test_project_data_file_is_read_as_tsv(tiny_ckpt, predictor, toy_data_dir, tmp_path):
    assert run_bulk(tiny_ckpt, toy_data_dir / "test.txt", tmp_path / "out.jsonl") == 0
    pairs = [line.split("\t") for line in (toy_data_dir / "test.txt").read_text().splitlines()]
    records = read_jsonl(tmp_path / "out.jsonl")
    assert_matches_predictor(records, [t for t, _ in pairs], predictor)
    assert sum(r["label"] == gold for r, (_, gold) in zip(records, pairs)) >= 0.9 * len(pairs)


def test_reading_streams_a_chunk_at_a_time(tiny_ckpt, tmp_path, monkeypatch):
    src = write_lines(tmp_path / "in.txt", sample_texts(400))
    lines, records = bulk.read_records(src)
    assert len([r for _, r in zip(range(10), records)]) == 10
    assert 0 < lines.position < lines.size / 4   # only the start of the file was read
    records.close()
    predictor, seen = Predictor.from_checkpoint(tiny_ckpt), []
    original = predictor.predict_logits
    monkeypatch.setattr(predictor, "predict_logits", lambda texts, *a: seen.append(len(texts)) or original(texts, *a))
    assert bulk.classify_file(predictor, src, tmp_path / "out.jsonl", chunk=64) == (400, 0)
    assert seen == [64] * 6 + [16]


# ---- resume

@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
def test_resume_after_an_interruption_equals_an_uninterrupted_run(tiny_ckpt, tmp_path, capfd, suffix):
    lines = sample_texts(300)
    for i in (5, 6, 100, 211):
        lines[i] = ""
    src = write_lines(tmp_path / "in.txt", lines)
    whole = tmp_path / f"whole{suffix}"
    assert run_bulk(tiny_ckpt, src, whole, "--chunk", "32", "--top-k", "2") == 0
    data = whole.read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    for name, cut in (("mid-line", ends[120] + 17), ("after-lines", ends[57]), ("on-a-chunk", ends[63]),
                      ("partial-first", 9), ("empty", 0)):
        cut_file = tmp_path / f"{name}{suffix}"
        cut_file.write_bytes(data[:cut])
        capfd.readouterr()
        assert run_bulk(tiny_ckpt, src, cut_file, "--chunk", "32", "--top-k", "2") == 0, name
        assert cut_file.read_bytes() == data, name
        done = sum(1 for e in ends if e <= cut)
        assert f"(resumed after {done})" in capfd.readouterr().err, name
    # already complete: nothing to do, nothing changed
    assert run_bulk(tiny_ckpt, src, whole, "--chunk", "32", "--top-k", "2") == 0
    assert whole.read_bytes() == data and "(resumed after 296)" in capfd.readouterr().err


def test_overwrite_starts_afresh(tiny_ckpt, tmp_path):
    src = write_lines(tmp_path / "in.txt", sample_texts(20))
    out = tmp_path / "out.jsonl"
    out.write_text('{"line": 999, "text": "x"}\n')
    assert run_bulk(tiny_ckpt, src, out, "--overwrite") == 0
    assert [r["line"] for r in read_jsonl(out)] == list(range(1, 21))


@pytest.mark.parametrize("other", ["shifted", "same-lines", "shorter", "not-output"])
def test_resume_refuses_the_output_of_another_input(tiny_ckpt, tmp_path, capfd, caplog, other):
    texts = sample_texts(50)
    src = write_lines(tmp_path / "in.txt", texts)
    out = tmp_path / "out.jsonl"
    if other == "not-output":
        out.write_text('{"label": "music"}\n')
    else:
        first = {"shifted": [""] + texts, "same-lines": texts[::-1], "shorter": texts + texts}[other]
        assert run_bulk(tiny_ckpt, write_lines(tmp_path / "first.txt", first), out) == 0
        out.write_bytes(out.read_bytes()[: -len(out.read_bytes()) // 3])
    before = out.read_bytes()
    rc, text = run_failing_cli(predict_cli.main, capfd, caplog, ["--checkpoint", str(tiny_ckpt), "--input", str(src),
                                                                  "--output", str(out), "--threads", "1"])
    assert rc == 2 and "error: " in text and str(out) in text
    assert (str(src) in text) or other == "not-output"
    assert out.read_bytes() == before   # refused before touching the output


# ---- bad input: exit 2 with file:line, no traceback

BAD_INPUTS = [
    ("in.jsonl", b'{"text": "rain"}\n\n{"text": "snow"\n', 3, "not valid JSON"),
    ("in.jsonl", b'{"text": "rain"}\n["snow"]\n', 2, "expected a JSON object, found list"),
    ("in.jsonl", b'{"text": "rain"}\n{"body": "snow"}\n', 2, "no 'text' field"),
    ("in.jsonl", b'{"text": "rain"}\n{"text": "  "}\n', 2, "'text' is empty"),
    ("in.jsonl", b'{"text": "rain"}\n{"text": 7}\n', 2, "'text' is not a string but int"),
    ("in.jsonl", b'{"text": "rain"}\n{"text": "caf\xe9"}\n', 2, "not valid UTF-8"),
    ("in.tsv", b"rain\tweather\nsnow\tweather\tx\n", 2, "expected 2 tab-separated field(s), found 3"),
    ("in.tsv", b"rain\tweather\tx\n", 1, "expected 1 (text) or 2 (text and label)"),
    ("in.tsv", b"rain\tweather\n\tweather\n", 2, "the text is empty"),
    ("in.txt", b"rain\tweather\nsnow\n", 2, "expected 2 tab-separated field(s), found 1"),
    ("in.txt", b"rain\n\xff\xfe\n", 2, "not valid UTF-8"),
    ("in.csv", b"id,body\n1,rain\n", 1, "the header has no column 'text'"),
    ("in.csv", b"id,text\n1,rain\n2,snow,x\n", 3, "expected 2 comma-separated fields, found 3"),
    ("in.csv", b'id,text\n1,rain\n2,"snow\n', 3, "malformed CSV"),
    ("in.csv", b"id,text\n1,rain\n2,\n", 3, "'text' is empty"),
]


@pytest.mark.parametrize("name,data,line,message", BAD_INPUTS)
def test_bad_input_exits_2_with_file_and_line(tiny_ckpt, tmp_path, capfd, caplog, name, data, line, message):
    src = tmp_path / name
    src.write_bytes(data)
    rc, text = run_failing_cli(predict_cli.main, capfd, caplog, ["--checkpoint", str(tiny_ckpt), "--input", str(src),
                                                                  "--output", str(tmp_path / "out.jsonl"),
                                                                  "--threads", "1"])
    assert rc == 2 and f"error: {src}:{line}: " in text and message in text, text


def test_unknown_formats_exit_2(tiny_ckpt, tmp_path, capfd, caplog):
    src = write_lines(tmp_path / "in.txt", ["rain"])
    for args in ([str(tmp_path / "in.xml"), str(tmp_path / "out.jsonl")], [str(src), str(tmp_path / "out.csv")],
                 [str(tmp_path / "missing.txt"), str(tmp_path / "out.jsonl")], [str(src), str(src)]):
        rc, text = run_failing_cli(predict_cli.main, capfd, caplog, ["--checkpoint", str(tiny_ckpt), "--input", args[0],
                                                                      "--output", args[1], "--threads", "1"])
        assert rc == 2 and "error: " in text, args


def test_records_before_a_bad_line_are_kept_and_resumed(tiny_ckpt, tmp_path, capfd):
    texts = sample_texts(100)
    lines = [json.dumps({"text": t}) for t in texts]
    src = write_lines(tmp_path / "in.jsonl", lines[:70] + ["{oops"] + lines[70:])
    out = tmp_path / "out.jsonl"
    assert run_bulk(tiny_ckpt, src, out, "--chunk", "32") == 2
    assert [r["line"] for r in read_jsonl(out)] == list(range(1, 71))
    write_lines(src, lines[:70] + [json.dumps({"text": "fixed"})] + lines[70:])
    capfd.readouterr()
    assert run_bulk(tiny_ckpt, src, out, "--chunk", "32") == 0
    assert "(resumed after 70)" in capfd.readouterr().err
    assert [r["text"] for r in read_jsonl(out)] == texts[:70] + ["fixed"] + texts[70:]


# ---- tokenization in worker processes

def test_tokenize_workers_give_the_same_output(tiny_ckpt, tmp_path, monkeypatch):
    texts = sample_texts(300, seed=1)
    src = write_lines(tmp_path / "in.txt", texts)
    assert run_bulk(tiny_ckpt, src, tmp_path / "w0.jsonl", "--chunk", "40", "--top-k", "3") == 0
    predictor = Predictor.from_checkpoint(tiny_ckpt)
    # the main process only runs the model: tokenizing here would fail
    monkeypatch.setattr(predictor, "predict_logits", None)
    monkeypatch.setattr(predictor.tokenizer, "encode", None)
    assert bulk.classify_file(predictor, src, tmp_path / "w2.jsonl", checkpoint=tiny_ckpt, top_k=3, chunk=40,
                              tokenize_workers=2) == (300, 0)
    assert (tmp_path / "w2.jsonl").read_bytes() == (tmp_path / "w0.jsonl").read_bytes()


def test_tokenize_workers_from_the_command_line(tiny_ckpt, tmp_path):
    src = write_lines(tmp_path / "in.txt", sample_texts(50, seed=2))
    assert run_bulk(tiny_ckpt, src, tmp_path / "w0.tsv", "--chunk", "16") == 0
    assert run_bulk(tiny_ckpt, src, tmp_path / "w1.tsv", "--chunk", "16", "--tokenize-workers", "1") == 0
    assert (tmp_path / "w1.tsv").read_bytes() == (tmp_path / "w0.tsv").read_bytes()


def test_tokenize_workers_auto_is_none_on_cpu_and_some_on_a_gpu(monkeypatch):
    from train import predict
    monkeypatch.setattr(predict, "usable_cores", lambda: 16)
    assert predict.tokenize_workers("auto", "cpu") == 0
    assert predict.tokenize_workers("auto", "cuda:1") == 8
    assert predict.tokenize_workers(3, "cpu") == 3
    monkeypatch.setattr(predict, "usable_cores", lambda: 2)
    assert predict.tokenize_workers("auto", "cuda") == 1
