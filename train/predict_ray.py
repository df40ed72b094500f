"""python -m train.predict_ray --checkpoint CKPT --input FILE --output DIR: classify a file with Ray Data.

    python -m train.predict_ray --checkpoint CKPT --input data.jsonl --output DIR [--actors N] [--batch-size 64]
        [--chunk 1024] [--address local|auto]

The input is read by a Ray Data datasource that runs train.bulk's parsers on the file's stream: the same formats,
line numbers, blank-line rules and file:line errors as `python -m train.predict --input` (Ray's read_text,
read_json and read_csv keep no line numbers, and read_text also splits lines at U+2028 and friends). Batches of
--chunk records go to --actors CPU actors of 1 CPU each, every actor holding one Predictor with one torch thread;
DIR receives JSON Lines files (Ray's write_json) of {"line", "text", "label", "score"}: sort or join on line.
--address local starts a Ray instance on this machine's usable cores; auto joins a running cluster (`ray start`).
A Ray instance already started in this process (ray.init) is used as it is.
"""
import argparse
import itertools
import logging
import sys
import time
from pathlib import Path

import ray
import ray.data
from ray.data.datasource import FileBasedDatasource

from textclf.checkpoint import check_folder
from textclf.data import COLUMNS
from textclf.errors import CheckpointError, DataError
from textclf.predict import Predictor, usable_cores
from train.bulk import READERS, read_records

log = logging.getLogger(__name__)
ROWS_PER_BLOCK = 4096   # records per block handed from the read task to the actors


class RecordError(ValueError):
    """A DataError crossing from a Ray task to the driver (DataError's constructor takes three arguments, so it
    does not survive pickling); the message keeps file:line."""


class RecordsDatasource(FileBasedDatasource):
    """One input file as blocks of {"line": int64, "text": string}, parsed by train.bulk while streaming."""

    def __init__(self, path, field="text", columns="auto", rows_per_block=ROWS_PER_BLOCK):
        super().__init__(str(path))
        self.field, self.columns, self.rows_per_block = field, columns, rows_per_block

    def _read_stream(self, f, path):
        import pyarrow as pa
        _, records = read_records(path, self.field, self.columns, stream=f)
        while True:
            try:
                part = list(itertools.islice(records, self.rows_per_block))
            except DataError as e:
                raise RecordError(str(e)) from None
            if not part:
                return
            yield pa.table({"line": pa.array([n for n, _ in part], pa.int64()),
                            "text": pa.array([t for _, t in part], pa.string())})


class Classifier:
    """A Ray Data callable class: one Predictor per actor, adding label and score to batches of records."""

    def __init__(self, checkpoint, batch_size):
        import torch
        torch.set_num_threads(1)   # one actor per CPU: more threads per actor would fight over the cores
        self.predictor = Predictor.from_checkpoint(checkpoint, "cpu", threads=1)
        self.batch_size = batch_size

    def __call__(self, batch):
        import numpy as np
        results = self.predictor.predict(list(batch["text"]), 1, self.batch_size)
        if self.predictor.multi_label:
            batch["labels"] = np.array([[x["label"] for x in r["labels"]] for r in results], dtype=object)
            batch["scores"] = np.array([[x["score"] for x in r["labels"]] for r in results], dtype=object)
            return batch
        batch["label"] = np.array([r["label"] for r in results], dtype=object)
        batch["score"] = np.array([r["score"] for r in results], dtype=np.float64)
        if self.predictor.out_of_scope_threshold is not None:
            batch["out_of_scope"] = np.array([r["out_of_scope"] for r in results], dtype=bool)
        return batch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, type=Path, help=".jsonl/.ndjson, .csv, .tsv or .txt")
    p.add_argument("--output", required=True, type=Path, help="a new or empty folder for the JSON Lines files")
    p.add_argument("--actors", type=int, default=None, help="model actors of 1 CPU each (default: usable cores)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass at most")
    p.add_argument("--chunk", type=int, default=1024, help="records per call of an actor")
    p.add_argument("--address", choices=("local", "auto"), default="local",
                   help="local: start Ray here; auto: join the running cluster")
    p.add_argument("--field", default="text", help="the text's field (JSON Lines) or column (CSV)")
    p.add_argument("--columns", choices=COLUMNS, default="auto", help="TSV column order (auto: detected)")
    args = p.parse_args(argv)
    if min(args.batch_size, args.chunk, args.actors or 1) < 1:
        p.error("--actors, --batch-size and --chunk must be positive")
    return args


def check_inputs(args):
    check_folder(args.checkpoint)
    if args.input.suffix.lower() not in READERS:
        raise DataError(args.input, None, f"unknown input format {args.input.suffix!r}: use one of "
                        f"{', '.join(READERS)}")
    if not args.input.is_file():
        raise DataError(args.input, None, "no such file")
    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        raise DataError(args.output, None, "exists and is not an empty folder; choose a new --output")


def classify(args, actors):
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True   # the files hold the records in input order
    # Reading and writing reserve no CPU: they are light next to the model, and the actors hold one CPU each
    # (with the reader waiting for a CPU the actors hold, the pipeline would never start).
    records = ray.data.read_datasource(RecordsDatasource(args.input.resolve(), args.field, args.columns), num_cpus=0)
    labelled = records.map_batches(Classifier, fn_constructor_args=(str(Path(args.checkpoint).resolve()),
                                                                    args.batch_size),
                                   batch_size=args.chunk, batch_format="numpy", num_cpus=1,
                                   compute=ray.data.ActorPoolStrategy(size=actors),
                                   udf_modifying_row_count=False)
    labelled.write_json(str(args.output.resolve()), ray_remote_args={"num_cpus": 0},
                        force_ascii=False, double_precision=15)


def cause(error):
    """The user's exception inside Ray's wrappers (RayTaskError, UserCodeException), or None."""
    while error is not None:
        if isinstance(error, (RecordError, CheckpointError)) and not isinstance(error, ray.exceptions.RayError):
            return error
        error = getattr(error, "cause", None) or error.__cause__
    return None


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        check_inputs(args)
    except (DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="auto" if args.address == "auto" else None, include_dashboard=False,
                 num_cpus=None if args.address == "auto" else usable_cores())
    actors = args.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    started = time.perf_counter()
    try:
        classify(args, actors)
    except Exception as e:  # Ray wraps the reader's error in its own exception types
        found = cause(e)
        if found is None:
            raise
        print(f"error: {found}", file=sys.stderr)
        return 2
    finally:
        if started_here:
            ray.shutdown()
    print(f"classified {args.input} into {args.output} in {time.perf_counter() - started:.1f} s with {actors} "
          f"actor(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
