"""Save and load students the Hugging Face way: ``config.json`` (our config, preset included) + ``model.safetensors``.

Loading refuses another folder format, unknown config keys, values of the wrong type, damaged files, unknown or
missing tensors and wrong shapes with an :class:`MpcgenError` naming the file. ``config.json`` records the folder
format (:data:`~mpcgen.models.config.FORMAT_KEY`); a folder without it was written before the field existed, in
format 1, and loads as such.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.io import write_json

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: nn.Module, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write ``config.json`` (with the folder format, :data:`~mpcgen.models.config.FORMAT_KEY`) +
    ``model.safetensors`` (+ the tokenizer passed or attached as ``model.tokenizer``)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # Tied tables appear once (the LM head holds no copy); contiguous copies because slices of imports may not be.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        # Everything is written into the temp folder first, so a failing serialiser leaves the folder as it was.
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt"})
        write_json(os.path.join(tmp, CONFIG_NAME), model.config.to_file_dict())
        # config.json last: a reader that finds it finds the weights (and tokenizer) that go with it.
        names = sorted(set(os.listdir(tmp)) - {WEIGHTS_NAME, CONFIG_NAME}) + [WEIGHTS_NAME, CONFIG_NAME]
        for name in names:
            os.replace(os.path.join(tmp, name), out / name)
    logger.info("saved %s (preset %s) to %s", type(model).__name__, model.config.preset, out)
    return out


def from_pretrained(directory: str | os.PathLike) -> nn.Module:
    """Load a student written by :func:`save_pretrained` (eval mode); a tokenizer there is attached.

    Raises:
        MpcgenError: a missing, damaged or truncated file, a config of another folder format, with unknown keys or
            values of the wrong type, tensors that do not fit the config; the message names the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mpcgen.models import build_model
    from mpcgen.models.config import ModelConfig
    from mpcgen.models.loading import read_json_object, read_tokenizer

    path = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise MpcgenError(f"{path} is not a student checkpoint: {name} is missing")
    data = read_json_object(path / CONFIG_NAME)
    try:
        config = ModelConfig.from_dict(data)
    except MpcgenError as err:
        raise MpcgenError(f"{path / CONFIG_NAME}: {err}") from None
    model = build_model(config)
    try:
        tensors = load_file(str(path / WEIGHTS_NAME))
    except (SafetensorError, OSError) as err:
        raise MpcgenError(f"{path / WEIGHTS_NAME} is damaged or truncated ({err}): copy or save the checkpoint "
                          "again") from None
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
    tokenizer = read_tokenizer(path, required=False)
    if tokenizer is not None:
        model.tokenizer = tokenizer
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
