"""The learning-rate schedule: linear warmup, then constant, linear or cosine decay to 0 at the last step.

The curves are transformers' (``get_scheduler``); around them this module fixes two choices of ours that every run
so far has used: the ramp starts at ``lr / warmup`` on step 0 (transformers' starts at 0, a step that trains
nothing), and the decay is evaluated with its own clock starting at the end of warmup. :func:`scheduler` applies
the factor to an optimizer with a ``LambdaLR`` whose total may change mid-run (time budgets fit it).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from mpcgen.errors import MpcgenError

# Our schedule kind -> transformers' scheduler name and arguments for the decay after warmup.
SCHEDULES: dict[str, tuple[str, dict]] = {
    "constant": ("constant", {}),
    "cosine": ("cosine", {}),
    # transformers' "linear" computes (N - t) / N, which rounds differently from the 1 - t / N our runs used (by an
    # ulp on ~40% of steps, so resumed runs would drift); polynomial decay of power 1 to 0 is that same line.
    "linear": ("polynomial", {"power": 1.0, "lr_end": 0.0}),
}
# Warmup is capped at this share of the run, so short runs are not all warmup.
MAX_WARMUP_SHARE = 10


def capped_warmup(warmup: int, total: int) -> int:
    """The warmup steps a run of ``total`` steps uses: ``warmup``, at most a tenth of the run (at least 1)."""
    return min(warmup, max(1, total // MAX_WARMUP_SHARE))


@functools.lru_cache(maxsize=64)
def _transformers_lambda(name: str, warmup: int, steps: int, kwargs: tuple) -> Callable[[int], float]:
    # lr 1 makes the scheduler's lambda the factor itself (polynomial decay divides by the optimizer's lr).
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return get_scheduler(name, probe, num_warmup_steps=warmup, num_training_steps=steps,
                         scheduler_specific_kwargs=dict(kwargs)).lr_lambdas[0]


def lr_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warmup, then ``kind`` decay to 0 at ``total``."""
    if kind not in SCHEDULES:
        raise MpcgenError(f"unknown --schedule {kind!r}; choose one of {sorted(SCHEDULES)}")
    if step < warmup:
        # transformers' ramp one step ahead: (step + 1) / warmup.
        return float(_transformers_lambda("constant_with_warmup", warmup, warmup, ())(step + 1))
    # Decay over the steps after warmup (at least 1), held at its end value past ``total``.
    span = max(1, total - warmup)
    name, kwargs = SCHEDULES[kind]
    return float(_transformers_lambda(name, 0, span, tuple(sorted(kwargs.items())))(min(step - warmup, span)))


def scheduler(optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float], *, step: int = 0) -> LambdaLR:
    """A ``LambdaLR`` that gives each param group ``lr_at(s) * group["lr_scale"]`` (scale 1 if unset) at step ``s``.

    Starts at ``step`` (a resumed run's next step), with that step's lr already set; call ``.step()`` once after
    each optimizer step. ``lr_at`` is called at every step, so it may follow a total that changes mid-run.
    """
    scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        # Base lr 1 (set even over a loaded optimizer state): the lambdas give absolute lrs, rounded as
        # lr_at(s) * lr_scale always has been.
        group["initial_lr"] = 1.0
    lambdas = [functools.partial(_scaled, lr_at, scale) for scale in scales]
    return LambdaLR(optimizer, lambdas, last_epoch=step - 1)


def _scaled(lr_at: Callable[[int], float], scale: float, step: int) -> float:
    return lr_at(step) * scale


__all__ = ["SCHEDULES", "capped_warmup", "lr_factor", "scheduler"]
