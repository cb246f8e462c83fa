"""Import Hugging Face teachers (GPT-2, T5, BART) into students, nanoGPT style: an explicit name map.

Our linear weights are stored (in_features, out_features): GPT-2's ``Conv1D`` weights already are, ``nn.Linear``
ones (T5, BART) are transposed. Importing into a non-vanilla preset keeps every teacher weight the student has and
leaves the rest at their init (constant attention M = 0, i.e. a uniform A over all columns; the thex reciprocal MLP
at its 1/x interpolant; affine-norm biases 0); Q/K of constant layers are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.models.config import ModelConfig

logger = logging.getLogger(__name__)

SUPPORTED = {"GPT2LMHeadModel": "gpt2", "T5ForConditionalGeneration": "t5", "BartForConditionalGeneration": "bart"}
_MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "t5": "T5ForConditionalGeneration", "bart": "BartForConditionalGeneration"}

Mapped = dict[str, torch.Tensor]


def import_hf(model_or_dir: Any, preset: str = "vanilla", *, overrides: dict[str, Any] | None = None) -> nn.Module:
    """Build a student from a Hugging Face model (or a local checkpoint folder) with ``preset``'s approximations.

    Args:
        model_or_dir: a ``GPT2LMHeadModel``, ``T5ForConditionalGeneration`` or ``BartForConditionalGeneration``, or
            a folder holding one (``config.json`` + weights; a tokenizer there is attached as ``model.tokenizer``).
        preset: a key of :data:`mpcgen.models.PRESETS`.
        overrides: config fields set after the preset (e.g. ``attention_layers``, ``resend_norm``); the config keeps
            the preset's name. Teacher tensors the resulting student has (e.g. Q/K of layers kept content-dependent)
            are imported.

    Returns:
        The student (eval mode). With ``vanilla`` its logits match the teacher's to float precision.
    """
    tokenizer = None
    if isinstance(model_or_dir, (str, Path)):
        model_or_dir, tokenizer = _load_dir(Path(model_or_dir))
    name = type(model_or_dir).__name__
    if name not in SUPPORTED:
        raise MpcgenError(f"cannot import {name}; supported architectures: {sorted(SUPPORTED)}")
    config_fn, map_fn = importer(SUPPORTED[name])
    exact = config_fn(model_or_dir)
    config = exact.with_preset(preset)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    mapped = map_fn(model_or_dir, exact)

    from mpcgen.models import build_model

    student = build_model(config)
    _load_mapped(student, mapped, strict=preset == "vanilla" and not overrides)
    if tokenizer is not None:
        student.tokenizer = tokenizer
    return student.eval()


def importer(family: str) -> tuple[Callable[[nn.Module], ModelConfig], Callable[[nn.Module, ModelConfig], Mapped]]:
    """``(config_fn, map_fn)`` of ``family``: ``config_fn(hf_model)`` is our exact config of a teacher,
    ``map_fn(hf_model, config)`` its tensors under our names (the one place that pairs teacher and student names)."""
    if family not in _IMPORTERS:
        raise MpcgenError(f"no importer for family {family!r}; supported: {sorted(_IMPORTERS)}")
    return _IMPORTERS[family]


def _load_dir(path: Path) -> tuple[Any, Any]:
    import transformers

    from mpcgen.models.loading import load_hf_model, read_tokenizer

    if not (path / "config.json").is_file():
        raise MpcgenError(f"{path} holds no config.json; pass a Hugging Face checkpoint folder")

    def pick(hf_config: Any) -> Any:
        cls_name = _MODEL_TYPES.get(hf_config.model_type)
        if cls_name is None:
            raise MpcgenError(f"cannot import model_type={hf_config.model_type!r} from {path}; "
                              f"supported: {sorted(_MODEL_TYPES)}")
        return getattr(transformers, cls_name)

    model, _ = load_hf_model(path, pick)
    return model, read_tokenizer(path, required=False)  # a weights-only folder is fine; damaged files are not


def _load_mapped(student: nn.Module, mapped: Mapped, *, strict: bool) -> None:
    """Copy mapped tensors into the student, checking shapes; ``strict``: every student tensor must be mapped."""
    own = student.state_dict()
    dropped = sorted(set(mapped) - set(own))
    missing = sorted(set(own) - set(mapped))
    if strict and (dropped or missing):
        raise MpcgenError(f"import name map mismatch: teacher tensors without a place {dropped[:8]}, "
                          f"student tensors without a source {missing[:8]}")
    for key in sorted(set(mapped) & set(own)):
        if tuple(mapped[key].shape) != tuple(own[key].shape):
            raise MpcgenError(f"shape mismatch for {key}: teacher {tuple(mapped[key].shape)}, "
                              f"student {tuple(own[key].shape)}")
        own[key] = mapped[key].detach().clone().to(own[key].dtype)
    if dropped:
        logger.info("import: %d teacher tensors not used by this student (e.g. %s)", len(dropped), dropped[:3])
    if missing:
        logger.info("import: %d student tensors left at their init (e.g. %s)", len(missing), missing[:3])
    student.load_state_dict(own, strict=True)


def _sd(model: nn.Module) -> Mapped:
    return {k: v.detach() for k, v in model.state_dict().items()}


def _need(sd: Mapped, key: str) -> torch.Tensor:
    if key not in sd:
        raise MpcgenError(f"teacher checkpoint lacks {key}; is it the architecture it claims to be?")
    return sd[key]


def _tied(model: nn.Module) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is None or out.weight.data_ptr() == inp.weight.data_ptr()


# --------------------------------------------------------------------------------------------------------- GPT-2


def gpt2_config(model: nn.Module) -> ModelConfig:
    """Our exact config for a GPT-2 teacher."""
    c = model.config
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or not getattr(c, "scale_attn_weights", True):
        raise MpcgenError("GPT-2 variants with scale_attn_by_inverse_layer_idx=True or scale_attn_weights=False "
                          "are not supported")
    return ModelConfig(arch="decoder", family="gpt2", vocab_size=c.vocab_size, n_positions=c.n_positions,
                       n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, d_ff=c.n_inner or 4 * c.n_embd,
                       activation=_activation(c.activation_function)[0],
                       gelu_variant=_activation(c.activation_function)[1], norm="layernorm",
                       norm_eps=c.layer_norm_epsilon, pre_norm=True, final_norm=True,
                       tie_word_embeddings=_tied(model), bos_token_id=_in_vocab(c.bos_token_id, c.vocab_size),
                       eos_token_id=_in_vocab(c.eos_token_id, c.vocab_size),
                       pad_token_id=_in_vocab(c.pad_token_id, c.vocab_size), preset="vanilla")


def gpt2_map(model: nn.Module, config: ModelConfig) -> Mapped:
    """GPT-2 tensors under our names; ``c_attn`` (d, 3d) is split into q, k, v."""
    sd, d = _sd(model), config.n_embd
    out = {"wte.weight": _need(sd, "transformer.wte.weight"), "stack.wpe.weight": _need(sd, "transformer.wpe.weight"),
           "stack.final_norm.weight": _need(sd, "transformer.ln_f.weight"),
           "stack.final_norm.bias": _need(sd, "transformer.ln_f.bias")}
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = _need(sd, "lm_head.weight").t()
    for i in range(config.n_layer):
        src, dst = f"transformer.h.{i}.", f"stack.blocks.{i}."
        w, b = _need(sd, src + "attn.c_attn.weight"), _need(sd, src + "attn.c_attn.bias")  # (d, 3d), (3d,)
        for j, name in enumerate("qkv"):
            out[dst + f"attn.{name}.weight"] = w[:, j * d:(j + 1) * d]
            out[dst + f"attn.{name}.bias"] = b[j * d:(j + 1) * d]
        pairs = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_proj": "attn.o", "mlp.c_fc": "mlp.fc1",
                 "mlp.c_proj": "mlp.fc2"}
        for s, t in pairs.items():
            out[dst + t + ".weight"] = _need(sd, src + s + ".weight")  # Conv1D: already (in, out)
            out[dst + t + ".bias"] = _need(sd, src + s + ".bias")
    return out


# ------------------------------------------------------------------------------------------------------------ T5


def t5_config(model: nn.Module) -> ModelConfig:
    """Our exact config for a T5 teacher (v1.0 relu or v1.1 gated-gelu)."""
    c = model.config
    act = getattr(c, "dense_act_fn", "relu")
    tied = _tied(model)
    return ModelConfig(arch="encoder-decoder", family="t5", vocab_size=c.vocab_size,
                       n_positions=getattr(c, "n_positions", None) or 512, n_embd=c.d_model,
                       n_layer=c.num_decoder_layers or c.num_layers, n_encoder_layer=c.num_layers, n_head=c.num_heads,
                       d_ff=c.d_ff, d_kv=c.d_kv, activation=_activation(act)[0], gelu_variant=_activation(act)[1],
                       gated_ff=bool(getattr(c, "is_gated_act", False)), norm="rmsnorm", norm_eps=c.layer_norm_epsilon,
                       pre_norm=True, final_norm=True, bias=False, scale_attention=False, tie_word_embeddings=tied,
                       scale_decoder_outputs=bool(getattr(c, "scale_decoder_outputs", tied)),
                       relative_attention_num_buckets=c.relative_attention_num_buckets,
                       relative_attention_max_distance=c.relative_attention_max_distance,
                       pad_token_id=c.pad_token_id, eos_token_id=c.eos_token_id,
                       decoder_start_token_id=c.decoder_start_token_id, preset="vanilla")


def t5_map(model: nn.Module, config: ModelConfig) -> Mapped:
    """T5 tensors under our names (``nn.Linear`` weights transposed to (in, out))."""
    sd = _sd(model)
    out = {"shared.weight": _need(sd, "shared.weight"),
           "encoder.rel_bias.weight": _need(sd, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
           "decoder.rel_bias.weight": _need(sd, "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
           "encoder.final_norm.weight": _need(sd, "encoder.final_layer_norm.weight"),
           "decoder.final_norm.weight": _need(sd, "decoder.final_layer_norm.weight")}
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = _need(sd, "lm_head.weight").t()
    ff = {"wi": "fc1", "wi_0": "fc1", "wi_1": "gate", "wo": "fc2"} if config.gated_ff else {"wi": "fc1", "wo": "fc2"}
    for stack, n in (("encoder", config.n_encoder_layer), ("decoder", config.n_layer)):
        for i in range(n):
            src, dst = f"{stack}.block.{i}.layer.", f"{stack}.blocks.{i}."
            parts = [("0.SelfAttention", "attn", "0.layer_norm", "norm1")]
            if stack == "decoder":
                parts.append(("1.EncDecAttention", "cross_attn", "1.layer_norm", "norm_cross"))
            for s_attn, d_attn, s_norm, d_norm in parts:
                for name in "qkvo":
                    out[dst + f"{d_attn}.{name}.weight"] = _need(sd, src + f"{s_attn}.{name}.weight").t()
                out[dst + d_norm + ".weight"] = _need(sd, src + s_norm + ".weight")
            k = 2 if stack == "decoder" else 1
            for s, t in ff.items():
                key = src + f"{k}.DenseReluDense.{s}.weight"
                if key in sd:
                    out[dst + f"mlp.{t}.weight"] = sd[key].t()
            out[dst + "norm2.weight"] = _need(sd, src + f"{k}.layer_norm.weight")
    return out


# ---------------------------------------------------------------------------------------------------------- BART


def bart_config(model: nn.Module) -> ModelConfig:
    """Our exact config for a BART teacher (post-LN, learned positions with offset 2)."""
    c = model.config
    if getattr(c, "normalize_before", False) or getattr(c, "add_final_layer_norm", False):
        raise MpcgenError("pre-LN BART variants (mBART) are not supported")
    if c.encoder_attention_heads != c.decoder_attention_heads or c.encoder_ffn_dim != c.decoder_ffn_dim:
        raise MpcgenError("BART with different encoder/decoder head counts or FFN widths is not supported")
    return ModelConfig(arch="encoder-decoder", family="bart", vocab_size=c.vocab_size,
                       n_positions=c.max_position_embeddings, n_embd=c.d_model, n_layer=c.decoder_layers,
                       n_encoder_layer=c.encoder_layers, n_head=c.encoder_attention_heads, d_ff=c.encoder_ffn_dim,
                       activation=_activation(c.activation_function)[0],
                       gelu_variant=_activation(c.activation_function)[1], norm="layernorm", norm_eps=1e-5,
                       pre_norm=False, final_norm=False, position_offset=2, scale_embedding=bool(c.scale_embedding),
                       layernorm_embedding=True, final_logits_bias=True, tie_word_embeddings=_tied(model),
                       pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
                       decoder_start_token_id=c.decoder_start_token_id, preset="vanilla")


def bart_map(model: nn.Module, config: ModelConfig) -> Mapped:
    """BART tensors under our names (``nn.Linear`` weights transposed to (in, out))."""
    sd = _sd(model)
    out = {"shared.weight": _need(sd, "model.shared.weight"),
           "lm_head.bias": _need(sd, "final_logits_bias").view(-1)}  # (1, V) -> (V,)
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = _need(sd, "lm_head.weight").t()
    for stack, n in (("encoder", config.n_encoder_layer), ("decoder", config.n_layer)):
        src0 = f"model.{stack}."
        out[f"{stack}.wpe.weight"] = _need(sd, src0 + "embed_positions.weight")
        for p in ("weight", "bias"):
            out[f"{stack}.emb_norm.{p}"] = _need(sd, src0 + f"layernorm_embedding.{p}")
        for i in range(n):
            src, dst = f"{src0}layers.{i}.", f"{stack}.blocks.{i}."
            pairs = {"self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
                     "self_attn.out_proj": "attn.o", "self_attn_layer_norm": "norm1", "fc1": "mlp.fc1",
                     "fc2": "mlp.fc2", "final_layer_norm": "norm2"}
            if stack == "decoder":
                pairs.update({"encoder_attn.q_proj": "cross_attn.q", "encoder_attn.k_proj": "cross_attn.k",
                              "encoder_attn.v_proj": "cross_attn.v", "encoder_attn.out_proj": "cross_attn.o",
                              "encoder_attn_layer_norm": "norm_cross"})
            for s, t in pairs.items():
                w = _need(sd, src + s + ".weight")
                out[dst + t + ".weight"] = w if w.dim() == 1 else w.t()  # norms are vectors; linears transpose
                out[dst + t + ".bias"] = _need(sd, src + s + ".bias")
    return out


# --------------------------------------------------------------------------------------------------------- shared


def _activation(name: str) -> tuple[str, str]:
    """HF activation name -> (our activation, gelu_variant)."""
    table = {"gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"), "gelu": ("gelu", "erf"),
             "relu": ("relu", "tanh")}
    if name not in table:
        raise MpcgenError(f"teacher activation {name!r} is not supported; supported: {sorted(table)}")
    return table[name]


def _in_vocab(token_id: int | None, vocab: int) -> int | None:
    # Tiny test configs keep GPT-2's 50256 ids with a 99-token vocabulary; such ids cannot be generated anyway.
    return token_id if token_id is not None and 0 <= token_id < vocab else None


_IMPORTERS: dict[str, tuple[Callable[[nn.Module], ModelConfig], Callable[[nn.Module, ModelConfig], Mapped]]] = {
    "gpt2": (gpt2_config, gpt2_map),
    "t5": (t5_config, t5_map),
    "bart": (bart_config, bart_map),
}
