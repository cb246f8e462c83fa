"""Differential privacy (DP-SGD with Opacus): what to freeze, noise calibration, the private optimizer and data
loader (ghost or per-sample clipping), accounting."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.train.clipping import GhostClipper
from mpcgen.train.families import family_spec, freeze_parameters

logger = logging.getLogger(__name__)

# How per-sample gradients are clipped: ghost (mpcgen.train.clipping: norms without per-sample gradients, one
# backward pass) or per-sample (Opacus' hooks: every per-sample gradient instantiated; the reference).
CLIPPINGS = ("ghost", "per-sample")
# Above this noise multiplier the gradient signal is drowned (each step's noise std is sigma * C per batch).
MAX_NOISE_MULTIPLIER = 50.0
def freeze_for_dp(model: nn.Module, family: str) -> list[str]:
    """Freeze the parameters Opacus cannot compute per-sample gradients for; return their names."""
    frozen = freeze_parameters(model, family_spec(family).dp_frozen, strict=False)
    if frozen:
        logger.warning("DP-SGD: froze %d parameter tensors without per-sample gradient support: %s", len(frozen), frozen)
    return frozen


def conv1d_grad_sample(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """Opacus grad sampler for transformers' ``Conv1D`` (``y = x W + b``, W of shape (in, out)): per-sample
    ``sum_t x_t g_t^T`` and ``sum_t g_t``, one einsum as Opacus' ``nn.Linear`` rule (its functorch fallback was ~20x
    slower than a plain step)."""
    x = activations[0].to(backprops.dtype)
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("n...i,n...j->nij", x, backprops)  # (B, in, out)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.einsum("n...k->nk", backprops)
    return out


def register_conv1d_grad_sampler() -> None:
    """Register :func:`conv1d_grad_sample` with Opacus (idempotent; called where the per-sample mode is set up)."""
    from opacus.grad_sample import register_grad_sampler
    from transformers.pytorch_utils import Conv1D

    register_grad_sampler(Conv1D)(conv1d_grad_sample)


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
    clipping: str = "ghost"  # one of CLIPPINGS
    # Ghost clipping only: examples per backward pass. A Poisson batch (the logical batch the noise and the
    # accountant see) is cut into chunks of this size whose clipped sums add up in p.grad, so large logical batches
    # fit in memory; None: the whole batch at once.
    physical_batch_size: Optional[int] = None


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


@dataclass
class PrivateTraining:
    """What :func:`make_private` returns; ``clipper`` is set in ghost mode, where it replaces ``loss.backward()``."""

    model: nn.Module
    optimizer: Any  # an Opacus DPOptimizer
    loader: Any  # an Opacus DPDataLoader (Poisson sampling)
    accountant: Any
    clipper: Optional[GhostClipper] = None


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any, *, plan: DPPlan,
                 distributed: bool) -> PrivateTraining:
    """DP-SGD around ``model``: Poisson-sampled ``loader``, clipping to ``plan.max_grad_norm``, Gaussian noise of std
    ``noise_multiplier * max_grad_norm`` on the summed clipped gradients, and an accountant charging every step.

    Both modes use Opacus' data loader, noise and accountant; they differ in how the clipped sum is computed. Ghost:
    :class:`GhostClipper` writes it to ``p.grad`` and Opacus' fast-clipping optimizer only adds noise and averages
    (``make_private`` of Opacus' ghost mode would need two backward passes and refuses tied embeddings). Per-sample:
    Opacus' ``PrivacyEngine`` in hooks mode.
    """
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

    module = DPDDP(model) if distributed else model  # DPDDP broadcasts rank 0's weights; gradients reduce in step()
    if plan.clipping == "per-sample":
        from opacus import PrivacyEngine

        register_conv1d_grad_sampler()
        engine = PrivacyEngine(accountant=plan.accountant)
        module, optimizer, loader = engine.make_private(
            module=module, optimizer=optimizer, data_loader=loader, noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm, poisson_sampling=True, grad_sample_mode="hooks")
        return PrivateTraining(module, optimizer, loader, engine.accountant)
    if plan.clipping != "ghost":
        raise MpcgenError(f"unknown --dp-clipping {plan.clipping!r}; choose one of {sorted(CLIPPINGS)}")
    from opacus.data_loader import DPDataLoader
    from opacus.optimizers import get_optimizer_class

    clipper = GhostClipper(model, plan.max_grad_norm)
    loader = DPDataLoader.from_data_loader(loader, distributed=distributed)
    # As PrivacyEngine.make_private: the rate the loader samples at, the expected batch per process.
    sample_rate = 1 / len(loader)
    expected_batch = int(len(loader.dataset) * sample_rate)
    if distributed:
        expected_batch /= torch.distributed.get_world_size()
    optimizer = get_optimizer_class(clipping="flat", distributed=distributed, grad_sample_mode="ghost")(
        optimizer, noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
        expected_batch_size=expected_batch, loss_reduction="mean")
    accountant = make_accountant(plan.accountant)
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return PrivateTraining(module, optimizer, loader, accountant, clipper)


__all__ = ["CLIPPINGS", "DPPlan", "MAX_NOISE_MULTIPLIER", "PrivateTraining", "conv1d_grad_sample",
           "epsilon_from_history", "freeze_for_dp", "make_accountant", "make_private", "plan_noise",
           "register_conv1d_grad_sampler"]
