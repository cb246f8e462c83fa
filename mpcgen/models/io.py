"""Save and load students the Hugging Face way: ``config.json`` (our config, preset included) + ``model.safetensors``.

Loading refuses unknown config keys, unknown or missing tensors and wrong shapes with an :class:`MpcgenError`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpcgen.errors import MpcgenError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: nn.Module, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ the tokenizer passed or attached as ``model.tokenizer``)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # Tied tables appear once (the LM head holds no copy); contiguous copies because slices of imports may not be.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(model.config.to_dict(), f, indent=2, sort_keys=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME):  # a reader never sees half a checkpoint
            os.replace(os.path.join(tmp, name), out / name)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    logger.info("saved %s (preset %s) to %s", type(model).__name__, model.config.preset, out)
    return out


def from_pretrained(directory: str | os.PathLike) -> nn.Module:
    """Load a student written by :func:`save_pretrained` (eval mode); a tokenizer there is attached."""
    from safetensors.torch import load_file

    from mpcgen.models import build_model
    from mpcgen.models.config import ModelConfig

    path = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise MpcgenError(f"{path} is not a student checkpoint: {name} is missing")
    try:
        data = json.loads((path / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise MpcgenError(f"{path / CONFIG_NAME} is not valid JSON: {e}") from None
    model = build_model(ModelConfig.from_dict(data))
    tensors = load_file(str(path / WEIGHTS_NAME))
    own = model.state_dict()
    unknown, missing = sorted(set(tensors) - set(own)), sorted(set(own) - set(tensors))
    if unknown or missing:
        raise MpcgenError(f"{path / WEIGHTS_NAME} does not fit its config: unknown tensors {unknown[:8]}, "
                          f"missing tensors {missing[:8]}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise MpcgenError(f"{path / WEIGHTS_NAME}: {key} has shape {tuple(value.shape)}, the config needs "
                              f"{tuple(own[key].shape)}")
    model.load_state_dict(tensors, strict=True)
    if (path / "tokenizer_config.json").is_file():
        import transformers

        model.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model.eval()


class PretrainedMixin:
    """``model.save_pretrained(dir)`` / ``Model.from_pretrained(dir)`` as methods."""

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
        return save_pretrained(self, directory, tokenizer)  # type: ignore[arg-type]

    @staticmethod
    def from_pretrained(directory: str | os.PathLike) -> nn.Module:
        return from_pretrained(directory)


def state_dict_equal(a: nn.Module, b: nn.Module) -> bool:
    """True when both models hold the same tensor names with bit-identical values."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
