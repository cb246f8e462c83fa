"""Training (stage 1, reused by distillation): model families, LoRA, DP-SGD, data, losses, lr schedule, the loop.

``loop`` (:class:`Trainer`, :class:`TrainPlan`, :class:`TrainHooks`), ``families`` (building, loading and exporting
Hugging Face models), ``lora``, ``dp`` (freezing, Conv1D swap, noise calibration, accounting), ``data`` (splits,
encoding, :class:`Collator`), ``losses``, ``schedule`` (the lr schedule) and ``optim`` (the weight-decay rule).
"""

from __future__ import annotations

from mpcgen.train.data import Collator, encode_examples, load_splits
from mpcgen.train.dp import (
    MAX_NOISE_MULTIPLIER,
    DPPlan,
    epsilon_from_history,
    freeze_for_dp,
    linearize_conv1d,
    make_accountant,
    plan_noise,
    restore_conv1d,
)
from mpcgen.train.families import (
    SPECS,
    FamilySpec,
    build_scratch_model,
    export_hf_model,
    family_spec,
    load_pretrained,
    unwrap,
)
from mpcgen.train.lora import apply_lora
from mpcgen.train.losses import sequence_loss, validation_loss
from mpcgen.train.loop import Trainer, TrainHooks, TrainPlan
from mpcgen.train.optim import decays, weight_decay_groups
from mpcgen.train.schedule import SCHEDULES, capped_warmup, lr_factor, scheduler

__all__ = ["Collator", "DPPlan", "FamilySpec", "MAX_NOISE_MULTIPLIER", "SCHEDULES", "SPECS", "TrainHooks",
           "TrainPlan", "Trainer", "apply_lora", "build_scratch_model", "capped_warmup", "decays", "encode_examples",
           "epsilon_from_history", "export_hf_model", "family_spec", "freeze_for_dp", "linearize_conv1d",
           "load_pretrained", "load_splits", "lr_factor", "make_accountant", "plan_noise", "restore_conv1d",
           "scheduler", "sequence_loss", "unwrap", "validation_loss", "weight_decay_groups"]
