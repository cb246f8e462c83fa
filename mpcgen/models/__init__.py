"""Student models: one definition, two backends (torch for training, CrypTen for private inference).

``build_model(config)`` builds a student; ``import_hf`` imports a Hugging Face teacher; ``from_pretrained`` loads a
saved student; :func:`mpcgen.models.merge.merge_model` folds constant products (MERGE).
"""

from __future__ import annotations

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


__all__ = ["COST_GROUPS", "DecoderLM", "EncoderDecoderLM", "KVCache", "ModelConfig", "ModelOutput", "PRESETS",
           "build_model", "from_pretrained", "import_hf", "save_pretrained"]
