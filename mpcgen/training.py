"""Reusable pieces of teacher fine-tuning (stage 1) that distillation (stage 2) also needs.

Model families are a registry (:data:`FAMILIES`): config and model classes, the default pretrained name, scratch size
presets (data, not code) and the parameters DP-SGD must freeze. Around it: building a model from scratch or from a
pretrained checkpoint, LoRA, batching with dynamic padding, the loss, the learning-rate schedule and the DP noise
calibration / accounting helpers.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)

from mpcgen.data import load_examples
from mpcgen.errors import MpcgenError
from mpcgen.tokenization import IGNORE_INDEX, encode_for_training, prepare_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilySpec:
    """One model family: how to build it, load it, and what DP-SGD has to freeze in it."""

    config_cls: type[PretrainedConfig]
    model_cls: type[PreTrainedModel]
    is_encoder_decoder: bool
    default_name: str
    # Scratch geometries: overrides of the config's defaults; "base" is the real *-base geometry.
    sizes: dict[str, dict[str, Any]]
    # Substrings of parameter names whose per-sample gradients Opacus cannot compute (looked up without a batch
    # dimension: learned positions, T5's relative attention bias); frozen under --dp.
    dp_frozen: tuple[str, ...]
    # LoRA target modules (peft names).
    lora_targets: tuple[str, ...]


FAMILIES: dict[str, FamilySpec] = {
    "gpt2": FamilySpec(
        GPT2Config,
        GPT2LMHeadModel,
        False,
        "gpt2",
        sizes={
            "tiny": dict(n_layer=2, n_embd=128, n_head=2),
            # The CPU quality recipe: 4 layers, d 256, ~4.2M parameters with a ~4k vocabulary: small enough for
            # ~4 epochs of E2E in 55 minutes on 2 cores (more epochs beat more width at this budget).
            "small": dict(n_layer=4, n_embd=256, n_head=4),
            "base": dict(n_layer=12, n_embd=768, n_head=12),
        },
        dp_frozen=("transformer.wpe.",),
        lora_targets=("c_attn", "c_proj", "c_fc"),
    ),
    "t5": FamilySpec(
        T5Config,
        T5ForConditionalGeneration,
        True,
        "t5-small",
        sizes={
            "tiny": dict(d_model=128, d_kv=64, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=2),
            "small": dict(d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4),
            "base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12),
        },
        dp_frozen=("relative_attention_bias",),
        lora_targets=("q", "k", "v", "o", "wi", "wo"),
    ),
    "bart": FamilySpec(
        BartConfig,
        BartForConditionalGeneration,
        True,
        "facebook/bart-base",
        sizes={
            "tiny": dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                         decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=256),
            "small": dict(d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024),
            "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                         decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
        },
        dp_frozen=("embed_positions.",),
        lora_targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    ),
}


def family_spec(model: str) -> FamilySpec:
    """The :class:`FamilySpec` for ``model``; an unknown name lists the valid ones."""
    if model not in FAMILIES:
        raise MpcgenError(f"unknown model {model!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[model]


def build_scratch_model(
    model: str, size: str, tokenizer: PreTrainedTokenizerBase, *, max_length: int, dropout: float = 0.1
) -> PreTrainedModel:
    """A randomly initialised model of family ``model`` and preset ``size`` sized to ``tokenizer``'s vocabulary."""
    spec = family_spec(model)
    if size not in spec.sizes:
        raise MpcgenError(f"unknown --size {size!r} for {model}; choose one of {sorted(spec.sizes)}")
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    geometry = dict(spec.sizes[size])
    if model == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=max_length, resid_pdrop=dropout,
                            embd_pdrop=dropout, attn_pdrop=dropout, **geometry, **ids)
    elif model == "t5":
        # T5 starts decoding from pad, as the pretrained checkpoints do.
        config = T5Config(vocab_size=len(tokenizer), dropout_rate=dropout, decoder_start_token_id=tokenizer.pad_token_id,
                          **geometry, **ids)
    else:
        # Scratch BART starts decoding from bos (pretrained BART uses eos), so decode_output can skip it.
        config = BartConfig(vocab_size=len(tokenizer), max_position_embeddings=max_length, dropout=dropout,
                            decoder_start_token_id=tokenizer.bos_token_id, forced_eos_token_id=tokenizer.eos_token_id,
                            **geometry, **ids)
    return spec.model_cls(config)


def load_pretrained(model: str, name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer with ``from_pretrained``, add missing special tokens, resize the embeddings."""
    spec = family_spec(model)
    auto = AutoModelForSeq2SeqLM if spec.is_encoder_decoder else AutoModelForCausalLM
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        net = auto.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise MpcgenError(f"cannot load {model} from {name_or_path!r} ({exc.__class__.__name__}): give --name-or-path "
                          "a local checkpoint directory, or use --init scratch") from None
    tokenizer = prepare_tokenizer(tokenizer, is_encoder_decoder=spec.is_encoder_decoder)
    if len(tokenizer) != net.get_input_embeddings().num_embeddings:
        net.resize_token_embeddings(len(tokenizer))
    net.config.pad_token_id = tokenizer.pad_token_id
    return net, tokenizer


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
    (in, out), so the Linear holds ``W.T``: outputs are identical. :func:`export_hf_model` converts back before saving,
    so checkpoints stay loadable by ``GPT2LMHeadModel``. Returns the converted module names.
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
    model._mpcgen_linearized = converted  # read by export_hf_model
    return converted


def _restore_conv1d(model: nn.Module, names: Sequence[str]) -> None:
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


def apply_lora(model: PreTrainedModel, family: str, *, r: int, alpha: int, dropout: float) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters on the family's attention and MLP projections."""
    from peft import LoraConfig, get_peft_model

    spec = family_spec(family)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(spec.lora_targets),
                        fan_in_fan_out=family == "gpt2",  # GPT-2's Conv1D stores weights transposed
                        task_type="SEQ_2_SEQ_LM" if spec.is_encoder_decoder else "CAUSAL_LM")
    return get_peft_model(model, config)


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / Opacus wrappers (both keep the wrapped model in ``.module`` / ``._module``)."""
    while True:
        if hasattr(model, "_module"):
            model = model._module
        elif isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ == "DPDDP":
            model = model.module
        else:
            return model


def export_hf_model(model: nn.Module) -> PreTrainedModel:
    """A plain Hugging Face model of the current weights (LoRA merged into a copy; the training model is untouched)."""
    model = unwrap(model)
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    linearized = getattr(model, "_mpcgen_linearized", None)
    if linearized:
        model = copy.deepcopy(model)
        _restore_conv1d(model, linearized)
        del model._mpcgen_linearized
    return model


# -- data ---------------------------------------------------------------------------------------------------------


def load_splits(task: str, data_dir: str | None, holdout_percent: float) -> tuple[list, list, str]:
    """(train, validation, train split name). Tasks without a train split train on validation minus a holdout."""
    try:
        return load_examples(task, "train", data_dir), load_examples(task, "validation", data_dir), "train"
    except MpcgenError as exc:
        if "no train split" not in str(exc):
            raise
    rows = load_examples(task, "validation", data_dir)

    # Hold out by a hash of the source so all references of one source fall on the same side.
    def held(ex) -> bool:
        return int(hashlib.md5(ex.source.encode()).hexdigest(), 16) % 10000 < holdout_percent * 100

    train, val = [ex for ex in rows if not held(ex)], [ex for ex in rows if held(ex)]
    logger.warning("%s has no train split: TRAINING ON 'validation' (%d examples), holding out %d (%.1f%% of sources) "
                   "for the validation loss; evaluate on 'test' only", task, len(train), len(val), holdout_percent)
    return train, val, "validation"



def encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Iterable[Any], *, is_encoder_decoder: bool, max_length: int
) -> list[dict[str, list[int]]]:
    """Encode ``Example(source, target)`` objects for training."""
    return [encode_for_training(tokenizer, ex.source, ex.target, is_encoder_decoder=is_encoder_decoder,
                                max_length=max_length) for ex in examples]


@dataclass
class Collator:
    """Dynamic padding: pad to the longest sequence of the batch; labels get -100 on padding."""

    pad_token_id: int

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        n_in = max(len(r["input_ids"]) for r in rows)
        n_lab = max(len(r["labels"]) for r in rows)
        input_ids = torch.full((len(rows), n_in), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), n_in), dtype=torch.long)
        labels = torch.full((len(rows), n_lab), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            attention[i, : len(r["input_ids"])] = 1
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def sequence_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], *, is_encoder_decoder: bool, per_sample: bool = False
) -> tuple[torch.Tensor, int]:
    """Cross-entropy on the target tokens; returns ``(loss, n_target_tokens)``.

    ``per_sample=False``: mean over all target tokens of the batch. ``per_sample=True`` (DP-SGD): mean over each
    example's tokens, then over examples, so one example's gradient does not depend on the others' lengths.
    """
    labels = batch["labels"]
    if is_encoder_decoder:
        # The model builds decoder inputs by shifting the labels (with -100 replaced by pad).
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = labels[:, 1:]
    token_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)  # (B, T)
    mask = labels != IGNORE_INDEX
    n_tokens = int(mask.sum())
    if per_sample:
        loss = (token_loss.sum(1) / mask.sum(1).clamp(min=1)).mean()
    else:
        loss = token_loss.sum() / max(n_tokens, 1)
    return loss, n_tokens


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


def lr_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warmup, then linear or cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "constant":
        return 1.0
    raise MpcgenError(f"unknown --schedule {kind!r}; choose one of ['constant', 'cosine', 'linear']")


# -- differential privacy -----------------------------------------------------------------------------------------

# Above this noise multiplier the gradient signal is drowned (each step's noise std is sigma * C per batch).
MAX_NOISE_MULTIPLIER = 50.0


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


def make_accountant(kind: str, history: Sequence[Sequence[float]] = ()):
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
