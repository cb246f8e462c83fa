"""Models of a given geometry with random weights: what benchmarks and cost measurements run.

Private cost depends on the geometry and the preset only (every CrypTen op is data-oblivious), so a random model
of a trained model's geometry costs exactly what the trained one does. :func:`geometry_config` is the one builder
of such configs: the family fields are the ones the Hugging Face importers (:mod:`mpcgen.models.hf`) set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpcgen.errors import MpcgenError

DEFAULT_FAMILY = {"decoder": "gpt2", "encoder-decoder": "t5"}
DEFAULT_VOCAB = {"gpt2": 50257, "t5": 32128, "bart": 50265}
FAMILY_FIELDS: dict[str, dict[str, Any]] = {
    "gpt2": dict(arch="decoder", eos_token_id=2),
    "t5": dict(arch="encoder-decoder", norm="rmsnorm", bias=False, scale_attention=False, activation="relu",
               relative_attention_num_buckets=32, relative_attention_max_distance=128, scale_decoder_outputs=True,
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
    "bart": dict(arch="encoder-decoder", pre_norm=False, final_norm=False, position_offset=2, scale_embedding=False,
                 layernorm_embedding=True, final_logits_bias=True, gelu_variant="erf", bos_token_id=0,
                 eos_token_id=2, decoder_start_token_id=2),
}
# Named geometries (layers, width, heads, vocabulary, positions), e.g. ``--geometry gpt2-base``.
GEOMETRIES: dict[str, dict[str, Any]] = {
    "gpt2-base": dict(arch="decoder", family="gpt2", layers=12, d_model=768, heads=12, vocab=50257, positions=1024),
    "e2e-small": dict(arch="decoder", family="gpt2", layers=4, d_model=256, heads=4, vocab=4096, positions=128),
    "gpt2-tiny": dict(arch="decoder", family="gpt2", layers=2, d_model=128, heads=2, vocab=1024, positions=128),
    "t5-small": dict(arch="encoder-decoder", family="t5", layers=6, d_model=512, heads=8, vocab=32128, positions=512),
    "bart-base": dict(arch="encoder-decoder", family="bart", layers=6, d_model=768, heads=12, vocab=50265,
                      positions=1024),
}


def geometry_config(*, preset: str = "vanilla", arch: str = "decoder", family: str | None = None, layers: int = 12,
                    d_model: int = 768, heads: int = 12, vocab: int | None = None, d_ff: int | None = None,
                    positions: int = 1024, encoder_layers: int | None = None) -> Any:
    """The :class:`~mpcgen.models.ModelConfig` of a ``preset`` model of this geometry.

    ``family`` defaults to gpt2 (decoder) / t5 (encoder-decoder), ``vocab`` to the family's, ``encoder_layers`` to
    ``layers``, ``d_ff`` to 4 x ``d_model``.
    """
    from mpcgen.models.config import PRESETS, ModelConfig

    if preset not in PRESETS:
        raise MpcgenError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    if arch not in DEFAULT_FAMILY:
        raise MpcgenError(f"unknown arch {arch!r}: use one of {sorted(DEFAULT_FAMILY)}")
    family = family or DEFAULT_FAMILY[arch]
    if family not in FAMILY_FIELDS:
        raise MpcgenError(f"unknown family {family!r}: use one of {sorted(FAMILY_FIELDS)}")
    fields = dict(FAMILY_FIELDS[family])
    if fields["arch"] != arch:
        raise MpcgenError(f"family {family!r} is {fields['arch']}, not {arch}")
    config = ModelConfig(
        family=family, vocab_size=vocab or DEFAULT_VOCAB[family], n_positions=positions, n_embd=d_model,
        n_layer=layers, n_head=heads, d_ff=d_ff,
        n_encoder_layer=(encoder_layers or layers) if arch == "encoder-decoder" else 0, **fields)
    return config.with_preset(preset)


def named_geometry(name: str) -> dict[str, Any]:
    """The keyword arguments of :func:`geometry_config` for a name in :data:`GEOMETRIES`."""
    if name not in GEOMETRIES:
        raise MpcgenError(f"unknown geometry {name!r}: use one of {sorted(GEOMETRIES)}")
    return dict(GEOMETRIES[name])


def random_model(config: Any, seed: int = 0) -> nn.Module:
    """A model of ``config`` (a ModelConfig or its dict) with random weights drawn from ``seed``, in eval mode."""
    from mpcgen.models import build_model
    from mpcgen.models.config import ModelConfig

    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    torch.manual_seed(seed)
    return build_model(config).eval()


__all__ = ["DEFAULT_FAMILY", "DEFAULT_VOCAB", "FAMILY_FIELDS", "GEOMETRIES", "geometry_config", "named_geometry",
           "random_model"]
