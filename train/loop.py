"""The training loop: epochs, schedule, evaluation each epoch, best/last checkpoints, metrics.jsonl."""
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from textclf.checkpoint import save_checkpoint
from textclf.predict import Predictor

from .metrics import scores

log = logging.getLogger(__name__)


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or "norm" in name.lower() or "embed" in name.lower()
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def schedule(optimizer, cfg, steps_per_epoch):
    """The learning-rate schedule, from torch's schedulers: a linear warmup over warmup_ratio of the steps (the
    rate times 1/warmup, 2/warmup, ... 1), then either a linear decay to 0 at the last step, or, with
    lr_decay_rate, the rate times lr_decay_rate ** epoch (epochs counted from the first step; no decay during
    the warmup)."""
    from torch.optim.lr_scheduler import LambdaLR, LinearLR, MultiStepLR, SequentialLR
    total = steps_per_epoch * cfg.epochs
    warmup = int(total * cfg.warmup_ratio)
    rate = cfg.lr_decay_rate
    if rate and not warmup:
        return MultiStepLR(optimizer, milestones=list(range(steps_per_epoch, total + 1, steps_per_epoch)), gamma=rate)
    if rate:   # after the warmup: the epoch's power of the rate, epochs counted from the first step
        decay = LambdaLR(optimizer, lambda k: rate ** ((k + warmup) // steps_per_epoch))
    else:
        decay = LinearLR(optimizer, 1.0, 0.0, total_iters=max(1, total - warmup))
    if not warmup:
        return decay
    ramp = LinearLR(optimizer, 1 / warmup, 1.0, total_iters=max(1, warmup - 1))
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])


def batch_order(examples, batch_size, rng, length_buckets=0):
    """Index lists, one per training batch, in a random order.

    With length_buckets = N > 0 the shuffled examples are taken N batches at a time, sorted by text length and
    cut into batches, and the batches are shuffled: each batch pads to a length close to its texts' own."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    if length_buckets <= 0:
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    span = batch_size * length_buckets
    batches = []
    for start in range(0, len(order), span):
        run = sorted(order[start: start + span], key=lambda i: len(examples[i].text))
        batches += [run[i: i + batch_size] for i in range(0, len(run), batch_size)]
    rng.shuffle(batches)
    return batches


def epoch_orders(examples, batch_size, seed, length_buckets=0, start_epoch=0):
    """Yield the batch order of each epoch from start_epoch + 1 on.

    The orders depend only on the seed and the epoch: a run resumed after epoch N takes the orders the
    uninterrupted run would have taken."""
    rng = random.Random(seed)
    for _ in range(start_epoch):
        batch_order(examples, batch_size, rng, length_buckets)
    while True:
        yield batch_order(examples, batch_size, rng, length_buckets)


def evaluate_examples(predictor, examples, batch_size=64):
    """Scores of a Predictor on examples; also returns the probabilities (N, C)."""
    index = {lab: i for i, lab in enumerate(predictor.labels)}
    probs = predictor.predict_proba([e.text for e in examples], batch_size)
    gold = [index[e.label] for e in examples]
    return scores(gold, probs.argmax(axis=1), predictor.labels), probs


def fit(model, tokenizer, labels, dataset, cfg, device, start_epoch=0):
    """Train and keep checkpoint-best/ (by valid accuracy) and checkpoint-last/ in cfg.out."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(out / "tensorboard"))
    index = {lab: i for i, lab in enumerate(labels)}
    train = dataset.train
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = schedule(optimizer, cfg, steps_per_epoch)
    predictor = Predictor(model, tokenizer, labels, model.config.max_length, device)
    orders = epoch_orders(train, cfg.batch_size, cfg.seed, cfg.length_buckets, start_epoch)
    best, since_best, history = -1.0, 0, []
    train_args = {k: v for k, v in vars(cfg).items()}
    metrics_file = (out / "metrics.jsonl").open("a", encoding="utf-8")
    step = 0
    for epoch in range(start_epoch + 1, start_epoch + cfg.epochs + 1):
        model.train()
        started, total_loss, seen = time.time(), 0.0, 0
        bar = tqdm(next(orders), desc=f"epoch {epoch}",
                   unit="batch", leave=False, mininterval=0.1 if sys.stderr.isatty() else 30)
        for indices in bar:
            batch = [train[i] for i in indices]
            enc = predictor.encode([e.text for e in batch])
            target = torch.tensor([index[e.label] for e in batch], device=device)
            loss = torch.nn.functional.cross_entropy(model(**enc), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            total_loss += loss.item() * len(batch)
            seen += len(batch)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)   # drawn at mininterval only
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        model.eval()
        valid, _ = evaluate_examples(predictor, dataset.valid, cfg.eval_batch_size)
        record = {"epoch": epoch, "step": step, "train_loss": total_loss / max(1, seen),
                  "valid_accuracy": valid["accuracy"], "valid_macro_f1": valid["macro_f1"],
                  "epoch_seconds": round(time.time() - started, 1), "lr": scheduler.get_last_lr()[0]}
        history.append(record)
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        writer.add_scalar("valid/accuracy", valid["accuracy"], step)
        log.info("epoch %d  train loss %.4f  valid accuracy %.4f (%d/%d)  %.0fs", epoch, record["train_loss"],
                 valid["accuracy"], valid["correct"], valid["total"], record["epoch_seconds"])
        save_checkpoint(out / "checkpoint-last", model, tokenizer, labels, record, train_args)
        if cfg.save_every_epoch:
            save_checkpoint(out / f"checkpoint-epoch-{epoch}", model, tokenizer, labels, record, train_args)
        if valid["accuracy"] > best:
            best, since_best = valid["accuracy"], 0
            save_checkpoint(out / "checkpoint-best", model, tokenizer, labels, record, train_args)
        else:
            since_best += 1
            if cfg.patience and since_best >= cfg.patience:
                log.info("no better valid accuracy for %d epochs: stopping early", since_best)
                break
    metrics_file.close()
    writer.close()
    return history


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
