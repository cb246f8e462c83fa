"""What generation starts from: a model (saved student or stage-1 teacher), its tokenizer, and checked prompt ids.

All of this runs on the owner of each thing: the server loads the model, the client encodes its prompts (it needs
the public tokenizer, never the weights).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.generation.loop import check_fits
from mpcgen.tokenization import encode_prompt

logger = logging.getLogger(__name__)

ModelLike = nn.Module | str | os.PathLike
Prompt = str | Sequence[int]  # text, or ready token ids (benchmarks)


def model_kind(directory: str | os.PathLike) -> str:
    """``"student"`` (mpcgen's ``config.json`` + ``model.safetensors``) or ``"teacher"`` (a Hugging Face checkpoint).

    Raises:
        MpcgenError: the folder is missing or is neither.
    """
    path = Path(directory)
    if not path.is_dir():
        raise MpcgenError(f"model folder {path} does not exist")
    config_path = path / "config.json"
    data: Any = None
    if config_path.is_file():
        try:
            data = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
    if isinstance(data, dict) and "arch" in data and (path / "model.safetensors").is_file():
        return "student"
    if isinstance(data, dict) and "model_type" in data:
        return "teacher"
    raise MpcgenError(f"{path} is neither a saved mpcgen student (config.json with 'arch' + model.safetensors) nor a "
                      "Hugging Face teacher checkpoint (config.json with 'model_type'): pass a stage-1 or stage-2 "
                      "output folder")


def load_model(source: ModelLike, *, preset: str = "vanilla") -> nn.Module:
    """A generation-ready model: a module as is, a saved student, or a teacher imported with ``preset``.

    Args:
        source: a model module, a student folder (:func:`mpcgen.models.from_pretrained`) or a stage-1 Hugging Face
            checkpoint folder (:func:`mpcgen.models.import_hf`).
        preset: the preset a teacher is imported into (``vanilla``: exact); ignored for students and modules.

    Returns:
        The model in eval mode; a tokenizer found beside the weights is attached as ``model.tokenizer``.
    """
    from mpcgen.models import from_pretrained, import_hf

    if isinstance(source, nn.Module):
        if not hasattr(source, "config") or not hasattr(source.config, "arch"):
            raise MpcgenError(f"{type(source).__name__} is not an mpcgen model: import Hugging Face models with "
                              "mpcgen.models.import_hf or pass their folder")
        return source.eval()
    if not isinstance(source, (str, os.PathLike)):
        raise MpcgenError(f"pass a model or a model folder, not {type(source).__name__}")
    kind = model_kind(source)
    model = from_pretrained(source) if kind == "student" else import_hf(source, preset=preset)
    logger.info("loaded %s %s (preset %s)", kind, source, model.config.preset)
    return model


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The tokenizer saved in ``directory`` (a model folder or a tokenizer-only folder)."""
    import transformers

    path = Path(directory)
    if not path.is_dir():
        raise MpcgenError(f"tokenizer folder {path} does not exist")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise MpcgenError(f"no tokenizer could be loaded from {path} ({str(err).splitlines()[0]}): pass the folder "
                          "the model was saved with") from None


def resolve_tokenizer(model: nn.Module, tokenizer: Any) -> Any:
    """``tokenizer`` if given (an object or a folder), else the one attached to ``model`` (may be None)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_tokenizer(tokenizer)
    return tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)


def encode_prompts(prompts: Sequence[Prompt], tokenizer: Any, config: Any, max_new_tokens: int) -> list[list[int]]:
    """Token ids of each prompt in the training layout, checked against the model (client side).

    Args:
        prompts: texts (encoded with :func:`mpcgen.tokenization.encode_prompt`) or ready id lists.
        tokenizer: needed for texts.
        config: the model's (public) config.
        max_new_tokens: tokens to generate.

    Raises:
        MpcgenError: no prompts; an empty prompt; characters the tokenizer cannot encode; ids outside the
            vocabulary; a prompt that with the generation would not fit the model's positions.
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise MpcgenError("prompts must be a list of texts (or of token id lists), e.g. ['name[The Eagle]']")
    if len(prompts) == 0:
        raise MpcgenError("no prompts given")
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if tokenizer is None:
                raise MpcgenError("text prompts need a tokenizer: pass tokenizer= (or a model folder that has one)")
            if not prompt.strip():
                raise MpcgenError(f"prompt {i} is empty: give a non-empty source text")
            ids = encode_prompt(tokenizer, prompt, is_encoder_decoder=config.arch == "encoder-decoder")
            check_encodable(tokenizer, prompt, ids, i)
        else:
            ids = [int(t) for t in prompt]
            if not ids:
                raise MpcgenError(f"prompt {i} is empty: give at least one token id")
        bad = sorted({t for t in ids if not 0 <= t < config.vocab_size})
        if bad:
            raise MpcgenError(f"prompt {i} has token ids {bad[:5]} outside the model's vocabulary [0, "
                              f"{config.vocab_size}): the tokenizer does not belong to this model")
        try:
            check_fits(config, len(ids), max_new_tokens)
        except MpcgenError as err:
            raise MpcgenError(f"prompt {i}: {err}") from None
        out.append(ids)
    return out


def check_encodable(tokenizer: Any, text: str, ids: list[int], index: int) -> None:
    """Refuse text the tokenizer maps to its unknown token (byte-level BPE never does; word-piece ones can)."""
    unk_id, unk = getattr(tokenizer, "unk_token_id", None), getattr(tokenizer, "unk_token", None)
    if unk_id is None or unk_id not in ids or (unk and unk in text):
        return
    # Find the characters responsible, for the message: those that encode to the unknown token on their own.
    bad = sorted({ch for ch in text if not ch.isspace()
                  and unk_id in tokenizer.encode(ch, add_special_tokens=False)})
    shown = "".join(bad[:10]) or "?"
    raise MpcgenError(f"prompt {index} has characters the tokenizer cannot encode ({shown!r}): remove or replace "
                      "them")
