"""Differential privacy (DP-SGD with Opacus): what to freeze, GPT-2's Conv1D swap, noise calibration, accounting."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.train.families import family_spec

logger = logging.getLogger(__name__)

# Above this noise multiplier the gradient signal is drowned (each step's noise std is sigma * C per batch).
MAX_NOISE_MULTIPLIER = 50.0
# Set on a model by linearize_conv1d: the names of the converted modules, for export_hf_model to convert back.
LINEARIZED_ATTR = "_mpcgen_linearized"


def freeze_for_dp(model: nn.Module, family: str) -> list[str]:
    """Freeze the parameters Opacus cannot compute per-sample gradients for; return their names."""
    patterns = family_spec(family).dp_frozen
    frozen = []
    for name, param in model.named_parameters():
        if any(p in name for p in patterns) and param.requires_grad:
            param.requires_grad_(False)
            frozen.append(name)
    if frozen:
        logger.warning("DP-SGD: froze %d parameter tensors without per-sample gradient support: %s", len(frozen), frozen)
    return frozen


def linearize_conv1d(model: nn.Module) -> list[str]:
    """Replace transformers' ``Conv1D`` (GPT-2's projections) by equivalent ``nn.Linear`` modules, in place.

    Opacus has an efficient per-sample-gradient rule for ``nn.Linear`` but none for ``Conv1D``, which falls back to
    functorch and made DP-SGD steps ~20x slower than plain steps. ``Conv1D`` computes ``x @ W + b`` with W of shape
    (in, out), so the Linear holds ``W.T``: outputs are identical. :func:`mpcgen.train.families.export_hf_model`
    converts back before saving, so checkpoints stay loadable by ``GPT2LMHeadModel``. Returns the converted module
    names.
    """
    from transformers.pytorch_utils import Conv1D

    converted = []
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            linear = nn.Linear(module.weight.shape[0], module.weight.shape[1], bias=module.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            linear.weight.requires_grad_(module.weight.requires_grad)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
            converted.append(name)
    setattr(model, LINEARIZED_ATTR, converted)
    return converted


def restore_conv1d(model: nn.Module, names: Sequence[str]) -> None:
    """Inverse of :func:`linearize_conv1d` on a copy about to be saved."""
    from transformers.pytorch_utils import Conv1D

    for name in names:
        linear = model.get_submodule(name)
        conv = Conv1D(linear.out_features, linear.in_features)
        with torch.no_grad():
            conv.weight.copy_(linear.weight.t())
            conv.bias.copy_(linear.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, conv)


@dataclass
class DPPlan:
    """What DP-SGD will run with, decided before training."""

    target_epsilon: float
    delta: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    noise_multiplier: float
    accountant: str
    frozen_parameters: list[str] = field(default_factory=list)


def plan_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Noise multiplier reaching ``target_epsilon`` after ``steps`` Poisson-sampled steps, or a :class:`MpcgenError`.

    Calibrated on steps (Opacus' ``make_private_with_epsilon`` only takes whole epochs, and our budgets are steps).
    """
    from opacus.accountants.utils import get_noise_multiplier

    if target_epsilon <= 0 or not 0 < delta < 1:
        raise MpcgenError(f"--target-epsilon must be > 0 and --delta in (0, 1); got {target_epsilon}, {delta}")
    hint = ("raise --target-epsilon, train fewer steps (--max-steps/--epochs), or use a larger dataset relative to "
            "--batch-size")
    try:
        sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                     steps=steps, accountant=accountant)
    except ValueError as exc:
        raise MpcgenError(f"--target-epsilon {target_epsilon} cannot be met with {steps} steps at sample rate "
                          f"{sample_rate:.4g} ({exc}); {hint}") from None
    if not math.isfinite(sigma) or sigma > MAX_NOISE_MULTIPLIER:
        raise MpcgenError(f"--target-epsilon {target_epsilon} with {steps} steps at sample rate {sample_rate:.4g} "
                          f"needs noise multiplier {sigma:.3g} (> {MAX_NOISE_MULTIPLIER}), which drowns the gradient; "
                          f"{hint}")
    return float(sigma)


def make_accountant(kind: str, history: Sequence[Sequence[float]] = ()) -> Any:
    """An Opacus accountant (``rdp`` or ``prv``) with ``history`` of ``(noise_multiplier, sample_rate, steps)``."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=kind)
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return accountant


def epsilon_from_history(kind: str, history: Sequence[Sequence[float]], delta: float) -> float:
    """Recompute epsilon from a saved accountant history (what a resumed run and the tests use)."""
    if not history:
        return 0.0
    return float(make_accountant(kind, history).get_epsilon(delta=delta))


__all__ = ["DPPlan", "MAX_NOISE_MULTIPLIER", "epsilon_from_history", "freeze_for_dp", "linearize_conv1d",
           "make_accountant", "plan_noise", "restore_conv1d"]
