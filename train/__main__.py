"""python -m train --data DIR --out RUN_DIR [...]: train one classifier, keep the best checkpoint."""
import json
import logging
import sys
import time
from pathlib import Path

import torch

from textclf.checkpoint import load_checkpoint
from textclf.errors import CheckpointError, DataError

from . import distributed
from .config import parse_train_config
from .data import label_counts, load_dataset
from .loop import fit, set_seed
from .models import build

log = logging.getLogger("train")


def setup_logging(ranks=None):
    """INFO on one process or rank 0; the other ranks of a torchrun say only warnings and errors."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if ranks is not None and not ranks.main:
        logging.getLogger().setLevel(logging.WARNING)


def _resume(cfg, device):
    model, tokenizer, labels = load_checkpoint(cfg.resume, device)
    meta = Path(cfg.resume) / "metrics.json"
    epoch = json.loads(meta.read_text()).get("epoch", 0) if meta.is_file() else 0
    return model, tokenizer, labels, epoch


def run(cfg, ranks):
    set_seed(cfg.seed)
    threads = distributed.threads_for(cfg.threads, ranks)
    if threads:
        torch.set_num_threads(threads)
    device = distributed.device_for(cfg.device, ranks)
    distributed.start(ranks, device, cfg.dist_timeout)
    data = load_dataset(cfg.data, cfg.columns, cfg.valid_fraction, cfg.seed, cfg.limit, cfg.skip_empty,
                        cfg.multi_label, cfg.label_separator, cfg.allow_no_label)
    log.info("data %s (%s): %d train, %d valid%s, %d test, %d labels", cfg.data, data.columns, len(data.train),
             len(data.valid), " (split from train)" if data.valid_from_train else "", len(data.test),
             len(data.labels))
    start_epoch = 0
    if cfg.resume:
        model, tokenizer, labels, start_epoch = _resume(cfg, device)
        if labels != data.labels:
            raise DataError(cfg.data, None, f"labels differ from the checkpoint's labels.json ({cfg.resume})")
    else:
        model, tokenizer = build(cfg, [e.text for e in data.train], len(data.labels))
        labels = data.labels
    if cfg.lr is None:
        cfg.lr = 5e-5 if model.config.embedding == "transformer" else 1e-3
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    log.info("model %s + %s: %.1fM parameters on %s; labels %s%s", model.config.embedding, model.config.encoder,
             params / 1e6, device, dict(label_counts(data.train)),
             f"; {ranks.world} ranks, {torch.get_num_threads()} torch threads each" if ranks.distributed else "")
    started = time.time()
    history = fit(model, tokenizer, labels, data, cfg, device, start_epoch, ranks)
    wall = time.time() - started
    if not ranks.main:   # rank 0 alone tests and writes
        return 0
    best = max(history, key=lambda r: r["valid_score"]) if history else None
    summary = {"train_seconds": round(wall, 1), "epochs": len(history), "best": best, "ranks": ranks.world}
    # a multi-label model always gets its per-label thresholds; --calibrate false skips only the temperature
    if (cfg.calibrate or cfg.multi_label) and data.valid and (Path(cfg.out) / "checkpoint-best").is_dir():
        from .calibrate import calibrate
        summary["calibration"] = calibrate(Path(cfg.out) / "checkpoint-best", data.valid, device,
                                           cfg.target_precision or None, threshold=cfg.threshold or None,
                                           fit_examples=data.train)
    if data.test:
        from textclf.predict import Predictor
        from .loop import evaluate_examples
        # the model as trained: float32 on a GPU too (serving and train.evaluate default to fp16 there)
        predictor = Predictor.from_checkpoint(Path(cfg.out) / "checkpoint-best", device, cuda_precision="fp32")
        test, _ = evaluate_examples(predictor, data.test, cfg.eval_batch_size)
        summary["test_accuracy"], summary["test_macro_f1"] = test["accuracy"], test["macro_f1"]
        if "micro_f1" in test:
            summary["test_micro_f1"] = test["micro_f1"]
            log.info("checkpoint-best: test micro-F1 %.4f, macro-F1 %.4f, subset accuracy %.4f (%d/%d)",
                     test["micro_f1"], test["macro_f1"], test["accuracy"], test["correct"], test["total"])
        else:
            log.info("checkpoint-best: test accuracy %.4f (%d/%d), macro-F1 %.4f", test["accuracy"], test["correct"],
                     test["total"], test["macro_f1"])
    (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    from .plots import plot_curves
    plot_curves(Path(cfg.out) / "metrics.jsonl", Path(cfg.out) / "curves.png")
    log.info("done in %.0fs: %s", wall, Path(cfg.out) / "checkpoint-best")
    return 0


def main(argv=None):
    setup_logging()
    cfg = parse_train_config(argv)
    ranks = None
    try:
        ranks = distributed.from_environment()
        setup_logging(ranks)
        return run(cfg, ranks)
    except (DataError, CheckpointError) as e:
        log.error("%s", e)
        return 2
    finally:
        if ranks is not None:
            distributed.stop(ranks)


if __name__ == "__main__":
    sys.exit(main())
