"""Training (stage 1, reused by distillation): model families, LoRA, DP-SGD, data, losses, lr schedule, the loop.

``loop`` (:class:`Trainer`, :class:`TrainPlan`, :class:`TrainHooks`), ``families`` (building, loading and exporting
Hugging Face models), ``lora``, ``dp`` (freezing, noise calibration, the private optimizer and loader, accounting),
``clipping`` (ghost clipping: per-sample clipping without per-sample gradients), ``data`` (splits,
encoding, :class:`Collator`), ``losses``, ``schedule`` (the lr schedule) and ``optim`` (the weight-decay rule).
"""

from __future__ import annotations

from mpcgen.train.data import Collator, encode_examples, load_pairs_file, load_splits
from mpcgen.train.clipping import GhostClipper
from mpcgen.train.dp import (
    CLIPPINGS,
    MAX_NOISE_MULTIPLIER,
    DPPlan,
    PrivateTraining,
    epsilon_from_history,
    freeze_for_dp,
    make_accountant,
    make_private,
    plan_noise,
)
from mpcgen.train.families import (
    SPECS,
    FamilySpec,
    build_scratch_model,
    export_hf_model,
    family_spec,
    freeze_parameters,
    load_pretrained,
    unwrap,
)
from mpcgen.train.lora import apply_lora
from mpcgen.train.losses import per_sample_loss, sequence_loss, validation_loss
from mpcgen.train.loop import OPTIMIZERS, Trainer, TrainHooks, TrainPlan, make_optimizer
from mpcgen.train.optim import decays, weight_decay_groups
from mpcgen.train.schedule import SCHEDULES, capped_warmup, lr_factor, scheduler

__all__ = ["CLIPPINGS", "Collator", "DPPlan", "FamilySpec", "GhostClipper", "MAX_NOISE_MULTIPLIER", "OPTIMIZERS",
           "PrivateTraining", "SCHEDULES", "SPECS", "TrainHooks", "TrainPlan", "Trainer", "apply_lora",
           "build_scratch_model", "capped_warmup", "decays", "encode_examples", "epsilon_from_history",
           "export_hf_model", "family_spec", "freeze_for_dp", "freeze_parameters", "load_pairs_file",
           "load_pretrained", "load_splits", "lr_factor", "make_accountant", "make_optimizer", "make_private",
           "per_sample_loss", "plan_noise", "scheduler", "sequence_loss", "unwrap", "validation_loss",
           "weight_decay_groups"]
