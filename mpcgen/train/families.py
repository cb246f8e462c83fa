"""Model families for training: how to build, load and export each Hugging Face model family.

The families themselves are :data:`mpcgen.models.config.FAMILIES` (name -> architecture), the one list every layer
reads; here each gets its training facts (a :class:`FamilySpec`: config and model classes, the default pretrained
name, scratch size presets as data, what DP-SGD freezes, LoRA targets).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn
from transformers import (
    AutoConfig,
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

from mpcgen.errors import MpcgenError
from mpcgen.models.config import FAMILIES
from mpcgen.tokenization import prepare_tokenizer


@dataclass(frozen=True)
class FamilySpec:
    """One model family (a key of :data:`FAMILIES`): how to build it, load it, and what DP-SGD freezes in it."""

    name: str
    config_cls: type[PretrainedConfig]
    model_cls: type[PreTrainedModel]
    default_name: str
    # Scratch geometries: overrides of the config's defaults; "base" is the real *-base geometry.
    sizes: dict[str, dict[str, Any]]
    # Substrings of parameter names whose per-sample gradients Opacus cannot compute (looked up without a batch
    # dimension: learned positions, T5's relative attention bias); frozen under --dp.
    dp_frozen: tuple[str, ...]
    # LoRA target modules (peft names).
    lora_targets: tuple[str, ...]
    # The Hugging Face config field counting decoder layers (all layers for GPT-2): what distillation's
    # --constant-attention-layers indexes.
    decoder_layers: str
    # The config field bounding sequence length (learned positions); None: no bound (T5's relative positions).
    positions: str | None = None

    @property
    def is_encoder_decoder(self) -> bool:
        return FAMILIES[self.name] == "encoder-decoder"


# One entry per family of FAMILIES (tests check that the keys agree).
SPECS: dict[str, FamilySpec] = {
    "gpt2": FamilySpec(
        "gpt2",
        GPT2Config,
        GPT2LMHeadModel,
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
        decoder_layers="n_layer",
        positions="n_positions",
    ),
    "t5": FamilySpec(
        "t5",
        T5Config,
        T5ForConditionalGeneration,
        "t5-small",
        sizes={
            "tiny": dict(d_model=128, d_kv=64, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=2),
            "small": dict(d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4),
            "base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12),
        },
        dp_frozen=("relative_attention_bias",),
        lora_targets=("q", "k", "v", "o", "wi", "wo"),
        decoder_layers="num_decoder_layers",
    ),
    "bart": FamilySpec(
        "bart",
        BartConfig,
        BartForConditionalGeneration,
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
        decoder_layers="decoder_layers",
        positions="max_position_embeddings",
    ),
}


def family_spec(model: str) -> FamilySpec:
    """The :class:`FamilySpec` for ``model``; an unknown name lists the valid ones."""
    if model not in SPECS:
        raise MpcgenError(f"unknown model {model!r}; choose one of {sorted(FAMILIES)}")
    return SPECS[model]


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
        # Token embeddings scaled by sqrt(d) (the original Transformer's convention). Without it (token and learned
        # position embeddings then start at the same norm) E2E's post-LN encoder maps every source to nearly the
        # same output within ~50 steps and never recovers, so the decoder learns to ignore it; with it the spread
        # dips too but recovers by ~200 steps (measured: docs/results.md, session 9).
        config = BartConfig(vocab_size=len(tokenizer), max_position_embeddings=max_length, dropout=dropout,
                            decoder_start_token_id=tokenizer.bos_token_id, forced_eos_token_id=tokenizer.eos_token_id,
                            scale_embedding=True, **geometry, **ids)
    return spec.model_cls(config)


# Files of which a saved tokenizer has at least one; without any, transformers builds an empty tokenizer from the
# model's config instead of failing.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "tokenizer.model")


def load_pretrained(model: str, name_or_path: str, *, max_length: int | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer with ``from_pretrained``, add missing special tokens, grow the embeddings to fit.

    Refused with an :class:`MpcgenError` before any weight is read: a checkpoint of another family than ``model``, a
    local folder without a tokenizer, and a ``max_length`` beyond the checkpoint's learned positions.
    """
    spec = family_spec(model)
    hint = "give --name-or-path a local checkpoint directory, or use --init scratch"
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise MpcgenError(f"cannot load {model} from {name_or_path!r} ({exc.__class__.__name__}): {hint}") from None
    if config.model_type != spec.config_cls.model_type:
        raise MpcgenError(f"{name_or_path!r} holds a {config.model_type!r} model, not {model}: pass the --model it is")
    limit = getattr(config, spec.positions) if spec.positions else None
    if max_length is not None and limit is not None and max_length > limit:
        raise MpcgenError(f"--max-length {max_length} exceeds the {limit} positions of {name_or_path!r} "
                          f"({spec.positions}): use --max-length {limit} or less")
    if Path(name_or_path).is_dir() and not any((Path(name_or_path) / f).is_file() for f in TOKENIZER_FILES):
        raise MpcgenError(f"{name_or_path} has no tokenizer (none of {list(TOKENIZER_FILES)}): save it beside the "
                          "model with tokenizer.save_pretrained(dir)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        net = spec.model_cls.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise MpcgenError(f"cannot load {model} from {name_or_path!r} ({exc.__class__.__name__}): {hint}") from None
    tokenizer = prepare_tokenizer(tokenizer, is_encoder_decoder=spec.is_encoder_decoder)
    # Grow only: a checkpoint may have more rows than its tokenizer has tokens (t5-small: 32128 for 32100), and
    # cutting them would change the pretrained model.
    if len(tokenizer) > net.get_input_embeddings().num_embeddings:
        net.resize_token_embeddings(len(tokenizer))
    net.config.pad_token_id = tokenizer.pad_token_id
    return net, tokenizer


def freeze_parameters(model: nn.Module, patterns: Sequence[str], *, strict: bool = True) -> list[str]:
    """Stop training every parameter whose name contains one of ``patterns``; return the names frozen now.

    ``strict``: a pattern that matches no parameter is an error (a typo would otherwise train everything).
    """
    frozen, unused = [], set(patterns)
    for name, param in model.named_parameters():
        hits = [p for p in patterns if p in name]
        unused.difference_update(hits)
        if hits and param.requires_grad:
            param.requires_grad_(False)
            frozen.append(name)
    if strict and unused:
        raise MpcgenError(f"--freeze {sorted(unused)} matches no parameter of this model (names look like "
                          f"{[n for n, _ in model.named_parameters()][:3]})")
    return frozen


# Opacus' DDP wrapper (imported by name: this module does not load Opacus); it keeps the model in ``.module``.
DP_DDP_NAMES = ("DPDDP", "DifferentiallyPrivateDistributedDataParallel")


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / Opacus wrappers (both keep the wrapped model in ``.module`` / ``._module``)."""
    while True:
        if hasattr(model, "_module"):
            model = model._module
        elif isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ in DP_DDP_NAMES:
            model = model.module
        else:
            return model


def export_hf_model(model: nn.Module) -> PreTrainedModel:
    """A plain Hugging Face model of the current weights (LoRA merged into a copy; the training model is untouched)."""
    model = unwrap(model)
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    return model


__all__ = ["SPECS", "TOKENIZER_FILES", "FamilySpec", "build_scratch_model", "export_hf_model", "family_spec",
           "load_pretrained", "unwrap"]
