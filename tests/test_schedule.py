"""train.loop.schedule: torch's schedulers give the curve the project has always trained with (closed form below)."""
import types
import warnings

import pytest
import torch

from train.loop import schedule


def closed_form(total, warmup, steps_per_epoch, rate):
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        if rate:
            return rate ** (step // steps_per_epoch)
        return max(0.0, (total - step) / max(1, total - warmup))
    return [factor(s) for s in range(total + 1)]


@pytest.mark.parametrize("epochs, steps_per_epoch, warmup_ratio, rate", [
    (1, 409, 0.1, 0.0), (2, 409, 0.1, 0.0), (3, 100, 0.0, 0.0), (1, 10, 0.1, 0.0), (3, 4, 0.2, 0.0),
    (2, 409, 0.05, 0.5), (3, 100, 0.0, 0.9), (4, 50, 0.1, 0.8), (10, 10, 0.2, 0.5), (3, 409, 0.5, 0.9),
])
def test_schedule_follows_the_closed_form(epochs, steps_per_epoch, warmup_ratio, rate):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2e-4)
    cfg = types.SimpleNamespace(epochs=epochs, warmup_ratio=warmup_ratio, lr_decay_rate=rate)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no scheduler misuse warnings either
        scheduler = schedule(optimizer, cfg, steps_per_epoch)
        rates = []
        for _ in range(epochs * steps_per_epoch):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])   # after the last step: what metrics.jsonl logs last
    expected = [2e-4 * f for f in closed_form(epochs * steps_per_epoch, int(epochs * steps_per_epoch * warmup_ratio),
                                               steps_per_epoch, rate)]
    assert rates == pytest.approx(expected, rel=1e-9, abs=1e-18)
