"""Bulk classification of a whole file: stream records in, classify them a chunk at a time, stream results out.

Input by extension: .jsonl/.ndjson (one JSON object a line, text in --field), .csv (header row, column --field),
.tsv (text, or text and label in either order), .txt (one text a line; TSV when its first non-blank line has a
tab). A UTF-8 BOM, CRLF line ends and blank lines are fine; a malformed record stops with file:line (DataError).
Output by extension: .jsonl ({"line", "text", "label", "score"[, "top_k"]} per record) or .tsv
(line, label, score, text). Memory is bounded by --chunk records whatever the file's size. An existing output is
resumed: its complete lines are kept, checked against the input and the rest appended.
"""
import io
import itertools
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from textclf.data import BOM, csv_rows, detect_columns, json_objects
from textclf.errors import DataError
from textclf.predict import TOKENIZE_CHUNK

log = logging.getLogger(__name__)
DETECT_ROWS = 1000   # rows of a two-column TSV that decide which column is the text (as textclf.data does)


class Lines:
    """(line number, decoded line with its line end) of a file read as bytes; position: bytes read so far.
    stream: an open binary stream of the file to read instead of opening path (Ray Data's read tasks)."""

    def __init__(self, path, stream=None):
        self.path, self.stream, self.position, self.size = Path(path), stream, 0, None
        if stream is None:
            try:
                self.size = self.path.stat().st_size
            except OSError as e:
                raise DataError(path, None, f"cannot read: {e.strerror}") from None

    def _open(self):
        if self.stream is not None:
            return io.BufferedReader(self.stream)
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise DataError(self.path, None, f"cannot read: {e.strerror}") from None

    def __iter__(self):
        with self._open() as f:
            for number, raw in enumerate(f, start=1):
                self.position += len(raw)
                if number == 1 and raw.startswith(BOM):
                    raw = raw[len(BOM):]
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(self.path, number, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _json_records(path, lines, field):
    for number, obj in json_objects(path, lines, type_name=lambda obj: type(obj).__name__):
        yield number, _text(path, number, obj.get(field, None), field)


def _text(path, number, text, field):
    if text is None:
        raise DataError(path, number, f"no {field!r} field (choose another with --field)")
    if not isinstance(text, str):
        raise DataError(path, number, f"{field!r} is not a string but {type(text).__name__}")
    if not text.strip():
        raise DataError(path, number, f"{field!r} is empty")
    return text


def _csv_records(path, lines, field):
    header = None
    for start, row in csv_rows(path, lines):
        if header is None:
            header = _header(path, start, row, field)
        elif len(row) != len(header[1]):
            raise DataError(path, start, f"expected {len(header[1])} comma-separated fields, found {len(row)}")
        else:
            yield start, _text(path, start, row[header[0]], field)


def _header(path, number, row, field):
    names = [name.strip() for name in row]
    if field not in names:
        raise DataError(path, number, f"the header has no column {field!r} (columns: {', '.join(names)}; "
                        "choose one with --field)")
    return names.index(field), names


def _tsv_rows(path, lines, width):
    """(line number, stripped fields) of the non-blank lines; width: fields per line, None = the first line's."""
    for number, line in lines:
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if width is None and len(fields) > 2:
            raise DataError(path, number, f"expected 1 (text) or 2 (text and label) tab-separated fields, "
                            f"found {len(fields)}")
        width = width or len(fields)
        if len(fields) != width:
            raise DataError(path, number, f"expected {width} tab-separated field(s), found {len(fields)}")
        yield number, fields


def _tsv_records(path, lines, columns):
    rows = _tsv_rows(path, lines, None if columns == "auto" else 2)
    head = list(itertools.islice(rows, DETECT_ROWS))
    if head and len(head[0][1]) == 2 and columns == "auto":
        columns = detect_columns(path, head)
    ti = 1 if columns == "label-text" else 0
    for number, fields in itertools.chain(head, rows):
        if not fields[ti]:
            raise DataError(path, number, "the text is empty")
        yield number, fields[ti]


def _txt_records(path, lines, columns):
    """Plain text, one text a line; read as TSV when the first non-blank line holds a tab (the project's own
    text<TAB>label .txt files) or when --columns names an order."""
    lines, seen = iter(lines), []
    for number, line in lines:
        seen.append((number, line))
        if line.strip():
            break
    lines = itertools.chain(seen, lines)
    if columns != "auto" or (seen and "\t" in seen[-1][1]):
        return _tsv_records(path, lines, columns)
    return ((number, line.strip()) for number, line in lines if line.strip())


READERS = {".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}


def read_records(path, field="text", columns="auto", stream=None):
    """-> (Lines, iterator of (line number, text)), streaming: the file is read as the iterator advances.
    stream: the file already opened as a binary stream (path then only names it)."""
    kind = READERS.get(Path(path).suffix.lower())
    if kind is None:
        raise DataError(path, None, f"unknown input format {Path(path).suffix!r}: use one of {', '.join(READERS)}")
    lines = Lines(path, stream)
    if kind == "json":
        return lines, _json_records(path, lines, field)
    if kind == "csv":
        return lines, _csv_records(path, lines, field)
    return lines, (_tsv_records if kind == "tsv" else _txt_records)(path, lines, columns)


# ---- output

def json_line(line, text, result, k):
    """The answer as the handler gives it (label and score; labels for a multi-label model; out_of_scope
    where the model has a reject threshold), with the input's line and text."""
    record = {"line": line, "text": text}
    record.update({key: result[key] for key in ("label", "score", "labels", "out_of_scope") if key in result})
    if k > 1:
        record["top_k"] = result["top_k"]
    return json.dumps(record, ensure_ascii=False) + "\n"


def tsv_line(line, text, result, k):
    """line, label, score, text; an out-of-scope answer has an empty label; a multi-label answer lists its
    labels and their scores comma-separated (both empty when no label reaches its threshold)."""
    if "labels" in result:
        label = ",".join(x["label"] for x in result["labels"])
        score = ",".join(repr(x["score"]) for x in result["labels"])
    else:
        label, score = result["label"] or "", repr(result["score"])
    return f"{line}\t{label}\t{score}\t{flat(text)}\n"


WRITERS = {".jsonl": json_line, ".ndjson": json_line, ".tsv": tsv_line}


def writer_for(path):
    writer = WRITERS.get(Path(path).suffix.lower())
    if writer is None:
        raise DataError(path, None, f"unknown output format {Path(path).suffix!r}: use one of {', '.join(WRITERS)}")
    return writer


def flat(text):
    """The text as a TSV output line holds it: tabs and line breaks turned into spaces."""
    return text.replace("\r\n", " ").replace("\t", " ").replace("\n", " ").replace("\r", " ")


def output_record(path, count, raw):
    """(input line number, text) recorded in one line of an output file (the text as flat() left it in TSV)."""
    try:
        if writer_for(path) is json_line:
            record = json.loads(raw)
            number, text = record["line"], record["text"]
        else:
            number, _, _, text = raw.decode("utf-8").rstrip("\n").split("\t", 3)
            number = int(number)
        if isinstance(number, int) and number > 0 and isinstance(text, str):
            return number, text
    except (ValueError, KeyError, TypeError):
        pass
    raise DataError(path, count, "is not a line of train.predict output (no input line number and text); "
                    "pass --overwrite to replace the file")


def completed(path):
    """-> (complete lines, (input line, text) of the last one or None, bytes they take) of an existing output.
    Bytes after the last line end are a line cut short by an interruption."""
    count, last, end = 0, None, 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            count, last, end = count + 1, raw, end + len(raw)
    return count, (output_record(path, count, last) if last else None), end


def check_resume(src, dst, done, last, field, columns):
    """Refuse an output that does not hold the results of the input's first `done` records: its last result must
    name the line and the text of record `done`. -> True when the output already covers every record."""
    _, records = read_records(src, field, columns)
    advice = "the output belongs to another input (pass --overwrite to replace it, or choose another --output)"
    try:
        seen, record = 0, None
        for seen, record in enumerate(itertools.islice(records, done), start=1):
            pass
        if seen < done:
            raise DataError(dst, None, f"holds {done} results but {src} has only {seen} records: {advice}")
        if record[0] != last[0]:
            raise DataError(dst, None, f"result {done} is for input line {last[0]}, but record {done} of {src} "
                            f"is on line {record[0]}: {advice}")
        if last[1] not in (record[1], flat(record[1])):
            raise DataError(dst, None, f"result {done} (input line {last[0]}) is for another text than line "
                            f"{record[0]} of {src}: {advice}")
        return next(records, None) is None
    finally:
        records.close()


def open_output(src, dst, overwrite, field, columns):
    """-> (results the output already holds, the output opened for appending), after checking them against the
    input and cutting a partial last line; the file is None when the output already covers the whole input."""
    if src.resolve() == dst.resolve():
        raise DataError(dst, None, "is the input file; choose another --output")
    if overwrite or not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        return 0, open(dst, "wb")
    try:
        done, last, end = completed(dst)
        size = dst.stat().st_size
    except OSError as e:
        raise DataError(dst, None, f"cannot read: {e.strerror}") from None
    if done and check_resume(src, dst, done, last, field, columns):
        return done, None
    if size > end:
        log.warning("%s: dropped a partial last line (%d bytes) left by an interruption", dst, size - end)
        os.truncate(dst, end)
    return done, open(dst, "ab")


# ---- tokenization in worker processes

_worker = {}


def _init_worker(folder):
    """Load only the checkpoint's tokenizer; an error is kept and raised by the first task, so that the main
    process reports it (a failing initializer would break the pool with no message)."""
    from textclf.checkpoint import check_folder
    from textclf.tokenization import load_tokenizer
    torch.set_num_threads(1)
    try:
        config = check_folder(folder)
        _worker.update(tokenizer=load_tokenizer(Path(folder) / "tokenizer", config.embedding, config.normalization),
                       max_length=config.max_length)
    except Exception as e:  # handed to the main process as it is
        _worker["error"] = e


def _encode_chunk(texts):
    """Tokenize a chunk exactly as Predictor.predict_proba does (sorted by character length, TOKENIZE_CHUNK
    texts per call) -> [(positions in texts, {"input_ids", "attention_mask"}: (B, T) int64 numpy)]."""
    if "error" in _worker:
        raise _worker["error"]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pieces = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        positions = order[start: start + TOKENIZE_CHUNK]
        encoded = _worker["tokenizer"].encode([texts[i] for i in positions], _worker["max_length"])
        pieces.append((positions, {k: v.numpy() for k, v in encoded.items()}))
    return pieces


def _encoded_in_order(pool, chunks, ahead):
    """(chunk, its tokenized pieces) in input order, at most `ahead` chunks read and queued beyond the one
    handed out (so memory stays bounded); on a bad record, the chunks before it are still handed out."""
    pending = deque()
    try:
        for chunk in chunks:
            pending.append((chunk, pool.submit(_encode_chunk, [text for _, _, text in chunk])))
            while len(pending) > ahead:
                done, future = pending.popleft()
                yield done, future.result()
    except DataError:
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
        raise
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


def _scored_logits_of_pieces(predictor, n, pieces, batch_size):
    """(logits (n, num_labels), in-scope scores (n,) or None) of the tokenized pieces of a chunk, as
    Predictor.scored_logits gives them for texts."""
    logits, features = np.empty((n, len(predictor.labels)), dtype=np.float32), None
    for positions, encoded in pieces:
        encoded = {k: torch.from_numpy(v) for k, v in encoded.items()}
        if not predictor.needs_features:
            logits[positions] = predictor.predict_encoded(encoded, batch_size)
            continue
        logits[positions], part = predictor.predict_encoded(encoded, batch_size, features=True)
        if features is None:
            features = np.empty((n, part.shape[1]), dtype=np.float32)
        features[positions] = part
    return logits, predictor.reject_scores(logits, features)


def _chunks(indexed, size):
    """Lists of `size` (index, line, text) records; on a bad record, the records before it still come out."""
    chunk = []
    try:
        for record in indexed:
            chunk.append(record)
            if len(chunk) == size:
                yield chunk
                chunk = []
    except DataError:
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk


def _classified(predictor, chunks, batch_size, checkpoint, workers):
    """(chunk, (its logits (len(chunk), num_labels), in-scope scores or None)) for each chunk in order; with
    workers, chunks are tokenized in that many spawned processes while this one runs the model."""
    if not workers:
        for chunk in chunks:
            yield chunk, predictor.scored_logits([text for _, _, text in chunk], batch_size)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(str(checkpoint),)) as pool:
        for chunk, pieces in _encoded_in_order(pool, chunks, 2 * workers):
            yield chunk, _scored_logits_of_pieces(predictor, len(chunk), pieces, batch_size)


def classify_file(predictor, src, dst, *, checkpoint=None, top_k=1, batch_size=64, chunk=8192, field="text",
                  columns="auto", overwrite=False, tokenize_workers=0):
    """Classify every record of src into dst, resuming an existing dst -> (results written now, held before)."""
    src, dst = Path(src), Path(dst)
    write = writer_for(dst)
    lines, records = read_records(src, field, columns)
    done, out = open_output(src, dst, overwrite, field, columns)
    if out is None:
        log.info("%s already holds the results of all %d records of %s: nothing to do", dst, done, src)
        return 0, done
    if done:
        log.info("resuming after %d records", done)
    # Restart at the chunk boundary before record `done`, recomputing (not writing) the results before it: the
    # chunk then holds the texts it held in an uninterrupted run, so passes, padding and scores are the same.
    indexed = itertools.islice(((i, n, t) for i, (n, t) in enumerate(records)), done // chunk * chunk, None)
    written = 0
    with out, tqdm(total=lines.size, unit="B", unit_scale=True, desc=src.name, file=sys.stderr) as bar:
        for part, (logits, scores) in _classified(predictor, _chunks(indexed, chunk), batch_size, checkpoint,
                                                  tokenize_workers):
            answers = predictor.answers(logits, top_k, scores)
            rows = [(n, t, r) for (i, n, t), r in zip(part, answers) if i >= done]
            out.write("".join(write(n, t, r, top_k) for n, t, r in rows).encode("utf-8"))
            out.flush()
            written += len(rows)
            bar.update(lines.position - bar.n)
    return written, done


def run(predictor, args):
    """The bulk mode of `python -m train.predict` (--input/--output): classify, then say how fast on stderr."""
    started = time.perf_counter()
    written, done = classify_file(predictor, args.input, args.output, checkpoint=args.checkpoint,
                                  top_k=args.top_k or 1, batch_size=args.batch_size, chunk=args.chunk,
                                  field=args.field, columns=args.columns, overwrite=args.overwrite,
                                  tokenize_workers=args.tokenize_workers)
    seconds = time.perf_counter() - started
    print(f"classified {written} texts in {seconds:.1f} s: {written / max(seconds, 1e-9):.1f} texts/s "
          f"(resumed after {done})", file=sys.stderr)
    return 0
