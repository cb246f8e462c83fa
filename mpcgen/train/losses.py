"""Stage 1's loss: cross-entropy on the target tokens, for training (optionally per sample) and validation."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mpcgen.tokenization import IGNORE_INDEX


def _token_losses(model: nn.Module, batch: dict[str, torch.Tensor], *,
                  is_encoder_decoder: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy per target position and the target mask, both (B, T)."""
    labels = batch["labels"]
    if is_encoder_decoder:
        # The model builds decoder inputs by shifting the labels (with -100 replaced by pad).
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = labels[:, 1:]
    token_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)  # (B, T)
    return token_loss, labels != IGNORE_INDEX


def sequence_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], *, is_encoder_decoder: bool, per_sample: bool = False
) -> tuple[torch.Tensor, int]:
    """Cross-entropy on the target tokens; returns ``(loss, n_target_tokens)``.

    ``per_sample=False``: mean over all target tokens of the batch. ``per_sample=True`` (DP-SGD): mean over each
    example's tokens, then over examples, so one example's gradient does not depend on the others' lengths.
    """
    token_loss, mask = _token_losses(model, batch, is_encoder_decoder=is_encoder_decoder)
    n_tokens = int(mask.sum())
    if per_sample:
        loss = (token_loss.sum(1) / mask.sum(1).clamp(min=1)).mean()
    else:
        loss = token_loss.sum() / max(n_tokens, 1)
    return loss, n_tokens


def per_sample_loss(model: nn.Module, batch: dict[str, torch.Tensor], *, is_encoder_decoder: bool) -> torch.Tensor:
    """Each example's mean cross-entropy over its target tokens, (B,): what ghost clipping differentiates."""
    token_loss, mask = _token_losses(model, batch, is_encoder_decoder=is_encoder_decoder)
    return token_loss.sum(1) / mask.sum(1).clamp(min=1)


@torch.no_grad()
def validation_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], *, is_encoder_decoder: bool) -> float:
    """Token-weighted mean cross-entropy over ``batches`` (model in eval mode for the duration)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        loss, n = sequence_loss(model, batch, is_encoder_decoder=is_encoder_decoder)
        total, count = total + float(loss) * n, count + n
    model.train(was_training)
    return total / max(count, 1)


__all__ = ["per_sample_loss", "sequence_loss", "validation_loss"]
