"""The one weight-decay rule of our AdamW runs (stage 1 and distillation): which parameters decay."""

from __future__ import annotations

from typing import Iterable

from torch import nn


def decays(param: nn.Parameter) -> bool:
    """Whether ``param`` gets weight decay: matrices do; vectors (biases, norm gains) do not."""
    return param.dim() >= 2


def weight_decay_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: ``params`` that :func:`decays` at ``weight_decay``, the rest at 0 (order kept)."""
    params = list(params)
    return [{"params": [p for p in params if decays(p)], "weight_decay": weight_decay},
            {"params": [p for p in params if not decays(p)], "weight_decay": 0.0}]


__all__ = ["decays", "weight_decay_groups"]
