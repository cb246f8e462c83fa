"""One typed config for every student (GPT-2, T5, BART), with Hugging Face field names, and the presets as data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mpcgen.approx import ACTIVATIONS, ATTENTIONS, GELU_VARIANTS, NORMS, lookup
from mpcgen.errors import MpcgenError

ARCHS: dict[str, tuple[str, ...]] = {"decoder": ("gpt2",), "encoder-decoder": ("t5", "bart")}
FAMILIES: dict[str, str] = {"gpt2": "decoder", "t5": "encoder-decoder", "bart": "encoder-decoder"}

# "exact" in a preset means the teacher family's own op (resolved by ModelConfig.with_preset).
EXACT = "exact"
_EXACT_NORM = {"gpt2": "layernorm", "bart": "layernorm", "t5": "rmsnorm"}

# Presets are overrides (data). Every preset sets every approximation knob, so presets compose by replacement.
PRESETS: dict[str, dict[str, Any]] = {
    "vanilla": {"activation": EXACT, "attention": "softmax", "norm": EXACT,
                "merge_linear": False, "embedding_resend": False},
    "mpcformer": {"activation": "quad", "attention": "2quad", "norm": EXACT,
                  "merge_linear": False, "embedding_resend": False},
    "mpcformer-2relu": {"activation": "quad", "attention": "2relu", "norm": EXACT,
                        "merge_linear": False, "embedding_resend": False},
    "thex": {"activation": "relu", "attention": "thex", "norm": "affine",
             "merge_linear": False, "embedding_resend": False},
    "merge": {"activation": "quad", "attention": "constant", "norm": "affine",
              "merge_linear": True, "embedding_resend": True},
    "merge-er-only": {"activation": EXACT, "attention": "softmax", "norm": EXACT,
                      "merge_linear": False, "embedding_resend": True},
    "merge-mm-only": {"activation": "quad", "attention": "constant", "norm": "affine",
                      "merge_linear": True, "embedding_resend": False},
}
CUSTOM = "custom"  # the preset recorded once a knob was changed by hand


@dataclass
class ModelConfig:
    """Geometry, approximation knobs and special tokens of a student model.

    Attention knobs: ``attention`` is the default of every attention (encoder self-, decoder self- and cross-);
    ``attention_layers[i]`` overrides decoder layer i (its self- and cross-attention). Constant attention keeps one
    matrix per head, except when ``merge_linear`` is set: then one matrix per layer is shared by all heads, which is
    what lets ``W_V W_O`` fold into one product. ``merged`` marks a model whose folds were applied
    (:func:`mpcgen.models.merge.merge_model`); ``constant_frozen`` marks one whose constant attention stores
    ``A = softmax(M)`` instead of ``M`` (inference form).
    """

    arch: str = "decoder"
    family: str = "gpt2"
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_encoder_layer: int = 0
    n_head: int = 12
    d_ff: int | None = None  # None: 4 * n_embd
    d_kv: int | None = None  # per-head width; None: n_embd // n_head
    activation: str = "gelu"
    gelu_variant: str = "tanh"  # "tanh" (GPT-2, T5) or "erf" (BART)
    gated_ff: bool = False  # T5 v1.1: act(x W0) * (x W1)
    attention: str = "softmax"
    attention_layers: list[str] | None = None
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    pre_norm: bool = True  # GPT-2/T5 pre-LN; BART post-LN
    final_norm: bool = True  # a norm after the last block (GPT-2 ln_f, T5 final_layer_norm)
    bias: bool = True  # biases on linear layers (T5: none)
    scale_attention: bool = True  # scores * d_kv^-0.5 (T5: no scaling)
    merge_linear: bool = False
    merged: bool = False
    constant_frozen: bool = False
    embedding_resend: bool = False
    # ER: a norm applied to the resent final state before it becomes the next token input (part of
    # resend_embedding, so training, plaintext and private generation agree); "rmsnorm" matches its scale to the
    # token embeddings' (one inverse square root per generated token under MPC). "none": resend the raw state.
    resend_norm: str = "none"
    kv_cache: bool = True
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool = False  # T5 with tied embeddings: LM-head input * n_embd^-0.5
    relative_attention_num_buckets: int = 0  # T5; 0 means learned absolute positions
    relative_attention_max_distance: int = 128
    position_offset: int = 0  # BART: 2 (rows 0-1 of its position table are unused)
    scale_embedding: bool = False  # BART: token embeddings * sqrt(n_embd)
    layernorm_embedding: bool = False  # BART: a norm right after the embeddings
    final_logits_bias: bool = False  # BART
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    sep_token_id: int | None = None
    decoder_start_token_id: int | None = None
    preset: str = "vanilla"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. the teacher's name); not used

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise MpcgenError(f"arch={self.arch!r} is not supported; choose one of {sorted(ARCHS)}")
        if self.family not in FAMILIES:
            raise MpcgenError(f"family={self.family!r} is not supported; choose one of {sorted(FAMILIES)}")
        if FAMILIES[self.family] != self.arch:
            raise MpcgenError(f"family={self.family!r} needs arch={FAMILIES[self.family]!r}, got arch={self.arch!r}")
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("n_encoder_layer", self.n_encoder_layer, minimum=1 if self.arch == "encoder-decoder" else 0)
        for name in ("d_ff", "d_kv"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if self.d_kv is None and self.n_embd % self.n_head:
            raise MpcgenError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} (or set d_kv)")
        lookup(ACTIVATIONS, self.activation, "activation")
        lookup(GELU_VARIANTS, self.gelu_variant, "gelu_variant")
        lookup(ATTENTIONS, self.attention, "attention")
        lookup(NORMS, self.norm, "norm")
        lookup(NORMS, self.resend_norm, "resend_norm")
        if self.attention_layers is not None:
            if not isinstance(self.attention_layers, list) or len(self.attention_layers) != self.n_layer:
                raise MpcgenError(f"attention_layers must be a list of n_layer={self.n_layer} names, "
                                  f"got {self.attention_layers!r}")
            for i, name in enumerate(self.attention_layers):
                lookup(ATTENTIONS, name, f"attention_layers[{i}]")
        if not isinstance(self.norm_eps, (int, float)) or self.norm_eps < 0:
            raise MpcgenError(f"norm_eps={self.norm_eps!r} must be a number >= 0")
        _check_int("relative_attention_num_buckets", self.relative_attention_num_buckets, minimum=0)
        _check_int("relative_attention_max_distance", self.relative_attention_max_distance, minimum=1)
        _check_int("position_offset", self.position_offset, minimum=0)
        if self.merged and not self.merge_linear:
            raise MpcgenError("merged=True needs merge_linear=True (presets 'merge', 'merge-mm-only')")
        if self.preset not in PRESETS and self.preset != CUSTOM:
            raise MpcgenError(f"preset={self.preset!r} is not supported; choose one of {sorted(PRESETS)}")
        if not isinstance(self.extra, dict):
            raise MpcgenError(f"extra must be a dict, got {type(self.extra).__name__}")

    # ---------------------------------------------------------------------------------------------- derived

    @property
    def head_dim(self) -> int:
        """Per-head width (T5's ``d_kv``)."""
        return self.d_kv if self.d_kv is not None else self.n_embd // self.n_head

    @property
    def ff_dim(self) -> int:
        """Feed-forward width."""
        return self.d_ff if self.d_ff is not None else 4 * self.n_embd

    @property
    def activation_fn_name(self) -> str:
        """The ACTIVATIONS entry to run (``gelu`` resolves to its erf or tanh form by ``gelu_variant``)."""
        return GELU_VARIANTS[self.gelu_variant] if self.activation == "gelu" else self.activation

    def layer_attention(self, i: int) -> str:
        """Attention normaliser of decoder layer ``i``."""
        return self.attention_layers[i] if self.attention_layers is not None else self.attention

    def exact_activation(self) -> str:
        """The teacher family's own activation (T5: relu, or gelu when gated)."""
        return "relu" if self.family == "t5" and not self.gated_ff else "gelu"

    # ----------------------------------------------------------------------------------------------- presets

    def with_preset(self, name: str) -> "ModelConfig":
        """A copy with preset ``name``'s overrides applied ("exact" = this family's own op)."""
        overrides = dict(lookup(PRESETS, name, "preset"))
        if overrides.get("activation") == EXACT:
            overrides["activation"] = self.exact_activation()
        if overrides.get("norm") == EXACT:
            overrides["norm"] = _EXACT_NORM[self.family]
        overrides.update(preset=name, attention_layers=None, merged=False, constant_frozen=False)
        return dataclasses.replace(self, **overrides)

    # ------------------------------------------------------------------------------------------ serialising

    def save_pretrained(self, directory: str) -> None:
        """Write ``config.json`` into ``directory`` (the Hugging Face config API, used by resume states)."""
        import json
        from pathlib import Path

        (Path(directory) / "config.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from :meth:`to_dict` output; unknown keys are refused (a typo must not pass silently)."""
        if not isinstance(data, dict):
            raise MpcgenError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MpcgenError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MpcgenError(f"{name}={value!r} must be an integer >= {minimum}")
