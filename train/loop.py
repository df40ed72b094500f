"""The training loop: epochs, schedule, evaluation each epoch, best/last checkpoints, metrics.jsonl."""
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from textclf.checkpoint import save_checkpoint
from textclf.data import label_set
from textclf.predict import Predictor

from . import distributed
from .metrics import multilabel_scores, scores

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
    """Scores of a Predictor on examples; also returns the probabilities (N, C). Multi-label: micro/macro-F1,
    subset accuracy (as "accuracy"), ... at the predictor's thresholds."""
    index = {lab: i for i, lab in enumerate(predictor.labels)}
    probs = predictor.predict_proba([e.text for e in examples], batch_size)
    if predictor.multi_label:
        return multilabel_scores(multi_hot(examples, index), probs, predictor.thresholds, predictor.labels), probs
    gold = [index[e.label] for e in examples]
    return scores(gold, probs.argmax(axis=1), predictor.labels), probs


def multi_hot(examples, index):
    """(N, C) 0/1 float32: the label sets of multi-label examples."""
    target = np.zeros((len(examples), len(index)), dtype=np.float32)
    for i, e in enumerate(examples):   # a single-label example counts as the set of its one label
        target[i, [index[label] for label in label_set(e)]] = 1.0
    return target


def positive_weights(examples, index, cap=100.0):
    """--pos-weight auto: negatives / positives per label in train, between 1 and cap."""
    counts = multi_hot(examples, index).sum(axis=0)
    return torch.tensor(np.clip((len(examples) - counts) / np.maximum(counts, 1.0), 1.0, cap), dtype=torch.float32)


def batch_loss(model, logits, batch, index, pos_weight, reduction="mean"):
    """Cross-entropy of the labels; multi-label: binary cross-entropy per label, averaged over the labels
    (reduction "sum": summed over the examples, as the distributed loss scales it)."""
    device = logits.device
    if model.config.multi_label:
        target = torch.from_numpy(multi_hot(batch, index)).to(device)
        per = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), target, pos_weight=None if pos_weight is None else pos_weight.to(device),
            reduction="none").mean(dim=1)
        return per.sum() if reduction == "sum" else per.mean()
    target = torch.tensor([index[e.label] for e in batch], device=device)
    return torch.nn.functional.cross_entropy(logits, target, reduction=reduction)


def steps_per_epoch(n_examples, batch_size, ranks):
    """Optimizer steps in one epoch: every global batch, less a last one too small to give each rank an example."""
    full, rest = divmod(n_examples, batch_size)
    return full + (1 if rest >= ranks.world else 0)


def fit(model, tokenizer, labels, dataset, cfg, device, start_epoch=0, ranks=None):
    """Train and keep checkpoint-best/ (by valid accuracy) and checkpoint-last/ in cfg.out. Under torchrun
    (ranks.distributed) every rank trains on its share of each global batch; rank 0 alone evaluates and writes."""
    ranks = ranks or distributed.Ranks()
    out = Path(cfg.out)
    writer, metrics_file = None, None
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tensorboard"))
        metrics_file = (out / "metrics.jsonl").open("a", encoding="utf-8")
    index = {lab: i for i, lab in enumerate(labels)}
    train = dataset.train
    pos_weight = positive_weights(train, index) if model.config.multi_label and cfg.pos_weight == "auto" else None
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = schedule(optimizer, cfg, steps_per_epoch(len(train), cfg.batch_size, ranks))
    predictor = Predictor(model, tokenizer, labels, model.config.max_length, device, config=model.config)
    trainable = model
    if ranks.distributed:   # a transformer's pooler (unused here) leaves parameters without gradients: allow them
        trainable = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model.config.embedding == "transformer")
    orders = epoch_orders(train, cfg.batch_size, cfg.seed, cfg.length_buckets, start_epoch)
    best, since_best, history = -1.0, 0, []
    train_args = {k: v for k, v in vars(cfg).items()}
    step = 0
    for epoch in range(start_epoch + 1, start_epoch + cfg.epochs + 1):
        model.train()
        started, losses = time.time(), torch.zeros(2, dtype=torch.float64, device=device)   # loss sum, examples
        bar = tqdm(next(orders), desc=f"epoch {epoch}", unit="batch", leave=False, disable=not ranks.main,
                   mininterval=0.1 if sys.stderr.isatty() else 30)
        for indices in bar:
            if not distributed.usable(indices, ranks):
                continue
            batch = [train[i] for i in distributed.shard(indices, ranks)]
            enc = predictor.encode([e.text for e in batch])
            logits = trainable(**enc)
            if ranks.distributed:   # DDP averages over ranks: scale so the gradient is the global batch's mean
                loss = batch_loss(model, logits, batch, index, pos_weight, "sum") * ranks.world / len(indices)
            else:
                loss = batch_loss(model, logits, batch, index, pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            local = loss.item() * len(indices) / ranks.world   # this rank's summed loss
            losses += torch.tensor([local, len(batch)], dtype=torch.float64, device=device)
            if ranks.main:
                bar.set_postfix(loss=f"{losses[0].item() / losses[1].item():.4f}", refresh=False)
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        if ranks.distributed:
            import torch.distributed as dist
            dist.all_reduce(losses)
        model.eval()
        stop = False
        if ranks.main:
            record, stop, best, since_best = _end_of_epoch(
                model, tokenizer, labels, dataset, cfg, predictor, out, epoch, step, losses, started,
                scheduler, train_args, best, since_best, metrics_file, writer)
            history.append(record)
        if distributed.broadcast_flag(stop, ranks, device):
            break
    if ranks.main:
        metrics_file.close()
        writer.close()
    if not distributed.same_weights(model, ranks, device):
        raise RuntimeError("the ranks ended training with different weights")
    if ranks.distributed and ranks.main:
        log.info("all %d ranks hold identical weights", ranks.world)
    distributed.barrier(ranks)
    return history


def _end_of_epoch(model, tokenizer, labels, dataset, cfg, predictor, out, epoch, step, losses, started, scheduler,
                  train_args, best, since_best, metrics_file, writer):
    """Rank 0's work after an epoch: evaluate on the whole valid split, log, checkpoint, early stopping.
    -> (record, stop, best, since_best)."""
    valid, _ = evaluate_examples(predictor, dataset.valid, cfg.eval_batch_size)
    # the checkpoint is chosen on valid accuracy, or on valid micro-F1 for a multi-label model (whose
    # "accuracy" is subset accuracy: every label of a text right)
    score_name = "micro_f1" if model.config.multi_label else "accuracy"
    record = {"epoch": epoch, "step": step, "train_loss": losses[0].item() / max(1.0, losses[1].item()),
              "valid_accuracy": valid["accuracy"], "valid_macro_f1": valid["macro_f1"],
              "valid_score": valid[score_name], "valid_score_name": score_name,
              "epoch_seconds": round(time.time() - started, 1), "lr": scheduler.get_last_lr()[0]}
    if model.config.multi_label:
        record["valid_micro_f1"] = valid["micro_f1"]
    metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()
    writer.add_scalar("valid/accuracy", valid["accuracy"], step)
    log.info("epoch %d  train loss %.4f  valid accuracy %.4f (%d/%d)%s  %.0fs", epoch, record["train_loss"],
             valid["accuracy"], valid["correct"], valid["total"],
             f"  micro-F1 {valid['micro_f1']:.4f}" if model.config.multi_label else "", record["epoch_seconds"])
    save_checkpoint(out / "checkpoint-last", model, tokenizer, labels, record, train_args)
    if cfg.save_every_epoch:
        save_checkpoint(out / f"checkpoint-epoch-{epoch}", model, tokenizer, labels, record, train_args)
    stop = False
    if valid[score_name] > best:
        best, since_best = valid[score_name], 0
        save_checkpoint(out / "checkpoint-best", model, tokenizer, labels, record, train_args)
    else:
        since_best += 1
        if cfg.patience and since_best >= cfg.patience:
            log.info("no better valid %s for %d epochs: stopping early", score_name, since_best)
            stop = True
    return record, stop, best, since_best


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
