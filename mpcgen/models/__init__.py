"""Student models: one definition, two backends (torch for training, CrypTen for private inference).

``build_model(config)`` builds a student; ``import_hf`` imports a Hugging Face teacher; ``from_pretrained`` loads a
saved student; :func:`mpcgen.models.merge.merge_model` folds constant products (MERGE).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.models.config import PRESETS, ModelConfig
from mpcgen.models.decoder import DecoderLM, ModelOutput
from mpcgen.models.encdec import EncoderDecoderLM
from mpcgen.models.hf import import_hf
from mpcgen.models.io import from_pretrained, save_pretrained
from mpcgen.models.layers import COST_GROUPS, KVCache

ARCH_CLASSES: dict[str, type[nn.Module]] = {"decoder": DecoderLM, "encoder-decoder": EncoderDecoderLM}


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised student for ``config`` (eval mode off: training mode, like ``nn.Module``)."""
    if not isinstance(config, ModelConfig):
        raise MpcgenError(f"build_model needs a ModelConfig, got {type(config).__name__}")
    return ARCH_CLASSES[config.arch](config)


def decoder_forward(model: nn.Module, *, input_ids: torch.Tensor | None = None, inputs_embeds: Any = None,
                    mask: torch.Tensor | None = None, source: Any = None, source_mask: torch.Tensor | None = None,
                    past: Any = None, use_cache: bool = False, return_hidden: bool = False) -> ModelOutput:
    """The decoder side of a model on token ids or token embeddings (positions are added here).

    A decoder-only model runs whole; an encoder-decoder runs its decoder on the encoder states ``source``
    (B, S, d) with their padding mask ``source_mask`` (B, S). ``mask`` (B, past + T) marks real decoder positions.
    """
    if model.config.arch == "decoder":
        return model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=mask, past=past,
                     use_cache=use_cache, return_hidden=return_hidden)
    return model(encoder_hidden=source, attention_mask=source_mask, decoder_input_ids=input_ids,
                 decoder_inputs_embeds=inputs_embeds, decoder_attention_mask=mask, past=past, use_cache=use_cache,
                 return_hidden=return_hidden)


__all__ = ["COST_GROUPS", "DecoderLM", "EncoderDecoderLM", "KVCache", "ModelConfig", "ModelOutput", "PRESETS",
           "build_model", "decoder_forward", "from_pretrained", "import_hf", "save_pretrained"]
