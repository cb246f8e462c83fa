"""One typed config for every student (GPT-2, T5, BART), with Hugging Face field names, and the presets as data."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from mpcgen.approx import ACTIVATIONS, ATTENTIONS, GELU_VARIANTS, NORMS, TWO_QUAD_LITE_RANGES, lookup
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
    # Content-aware at a fraction of mpcformer's rounds: no inverse square root (centred affine norms calibrated on
    # the teacher, folded into the next linear), 2Quad whose reciprocal is 6 Newton steps from a public start, Quad.
    "lite": {"activation": "quad", "attention": "2quad-lite", "norm": "centered",
             "merge_linear": True, "embedding_resend": False},
    # lite plus Embedding Resending: ER needs no constant attention, so it can sit on a content-aware student.
    "lite-er": {"activation": "quad", "attention": "2quad-lite", "norm": "centered",
                "merge_linear": True, "embedding_resend": True},
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

# The layout of a saved student folder (config.json + model.safetensors), stored in config.json under FORMAT_KEY.
# Bump it when a folder written by this version would be misread by an older one (or the reverse). Folders saved
# before the field existed have no key and are format 1: that is the layout they were written in.
FORMAT_KEY = "mpcgen_format"
FORMAT_VERSION = 1

# What each annotation of ModelConfig admits (JSON-decoded values); a new annotation needs an entry here.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,), "int": (int,), "int | None": (int, type(None)), "float": (int, float), "str": (str,),
    "list[str] | None": (list, type(None)), "dict[str, Any]": (dict,),
}
_TOKEN_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id")


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
    # 2quad-lite: the range of its reciprocal (mpcgen.approx.TWO_QUAD_LITE_RANGES; same cost, "high" holds sharper
    # rows).
    lite_range: str = "standard"
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
        _check_types(self)
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
        lookup(TWO_QUAD_LITE_RANGES, self.lite_range, "lite_range")
        if not isinstance(self.norm_eps, (int, float)) or self.norm_eps < 0:
            raise MpcgenError(f"norm_eps={self.norm_eps!r} must be a number >= 0")
        _check_int("relative_attention_num_buckets", self.relative_attention_num_buckets, minimum=0)
        _check_int("relative_attention_max_distance", self.relative_attention_max_distance, minimum=1)
        _check_int("position_offset", self.position_offset, minimum=0)
        if self.merged and not self.merge_linear:
            raise MpcgenError("merged=True needs merge_linear=True (presets 'merge', 'merge-mm-only')")
        if self.preset not in PRESETS and self.preset != CUSTOM:
            raise MpcgenError(f"preset={self.preset!r} is not supported; choose one of {sorted(PRESETS)}")
        for name in _TOKEN_FIELDS:
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise MpcgenError(f"{name}={value} is outside the vocabulary [0, {self.vocab_size})")

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
        from pathlib import Path

        from mpcgen.io import write_json

        write_json(Path(directory) / "config.json", self.to_file_dict())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    def to_file_dict(self) -> dict[str, Any]:
        """What ``config.json`` of a saved folder holds: every field and the folder format (:data:`FORMAT_KEY`)."""
        return {**self.to_dict(), FORMAT_KEY: FORMAT_VERSION}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from :meth:`to_dict` (or :meth:`to_file_dict`) output.

        Refuses another folder format (checked first: a newer format may have other keys), unknown keys (a typo
        must not pass silently) and values of the wrong type.
        """
        if not isinstance(data, dict):
            raise MpcgenError(f"a model config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        check_format(data.pop(FORMAT_KEY, FORMAT_VERSION))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            hints = {k: m[0] for k in unknown if (m := difflib.get_close_matches(k, known, n=1, cutoff=0.8))}
            hint = "; did you mean " + ", ".join(f"{m!r} (not {k!r})" for k, m in hints.items()) + "?" if hints \
                else f"; known keys: {sorted(known)}"
            raise MpcgenError(f"unknown model config keys {unknown}{hint}")
        return cls(**data)


def check_format(version: Any) -> None:
    """Refuse a saved folder of another format than :data:`FORMAT_VERSION` (see :data:`FORMAT_KEY`)."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MpcgenError(f"{FORMAT_KEY}={version!r} must be a format number >= 1")
    if version != FORMAT_VERSION:
        fix = "upgrade mpcgen to load it" if version > FORMAT_VERSION else "load it with the mpcgen version that " \
            "wrote it and save it again with this one"
        raise MpcgenError(f"written by mpcgen format {version}, this is {FORMAT_VERSION}: {fix}")


def _check_types(config: ModelConfig) -> None:
    """Refuse a field whose value is not of its annotated type (bool is no int here: JSON true is not 1)."""
    for f in dataclasses.fields(config):
        allowed, value = _FIELD_TYPES[f.type], getattr(config, f.name)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise MpcgenError(f"{f.name}={value!r} must be of type {f.type}, not {type(value).__name__}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MpcgenError(f"{name}={value!r} must be an integer >= {minimum}")
