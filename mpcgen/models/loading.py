"""The one loader of models from disk: what a folder holds, and the mpcgen model built from it.

Two kinds of folders come out of the stages:

* ``student``: a saved mpcgen model (``config.json`` with ``arch`` and ``preset``, ``model.safetensors``), written
  by :func:`mpcgen.models.save_pretrained` (stage 2, benchmarks, tests);
* ``teacher``: a Hugging Face checkpoint (``config.json`` with ``model_type``, and its weights), written by stage 1.

Generation, the MPC runtime, distillation and evaluation all detect the kind with :func:`model_kind` and load with
:func:`load_model` (a teacher is imported into a preset); evaluation of a teacher with Hugging Face's own
``generate`` (beam search) loads the HF model itself, after the same detection.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from mpcgen.errors import MpcgenError

logger = logging.getLogger(__name__)

ModelLike = nn.Module | str | os.PathLike
KINDS = ("student", "teacher")
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TRAINING_ARGS_FILE = "training_args.json"


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def model_kind(directory: str | os.PathLike) -> str:
    """``"student"`` or ``"teacher"`` (see the module docstring).

    Raises:
        MpcgenError: the folder is missing or holds neither.
    """
    path = Path(directory)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise MpcgenError(f"model folder {path} {what}")
    config = _read_config(path)
    if config is not None:
        if "arch" in config and "model_type" not in config and (path / "model.safetensors").is_file():
            return "student"
        if "model_type" in config and any((path / name).is_file() for name in HF_WEIGHT_FILES):
            return "teacher"
    raise MpcgenError(f"{path} is neither a saved mpcgen student (config.json with 'arch' + model.safetensors) nor a "
                      "Hugging Face teacher checkpoint (config.json with 'model_type' + its weights): pass a stage-1 "
                      "or stage-2 output folder")


def read_training_args(directory: str | os.PathLike) -> dict[str, Any]:
    """``training_args.json`` of a checkpoint folder, or ``{}`` if it has none."""
    path = Path(directory) / TRAINING_ARGS_FILE
    if not path.is_file():
        return {}
    try:
        args = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MpcgenError(f"{path}: cannot read training arguments ({err})") from None
    if not isinstance(args, dict):
        raise MpcgenError(f"{path}: expected a JSON object, got {type(args).__name__}")
    return args


def load_model(source: ModelLike, *, preset: str = "vanilla", expect_preset: str | None = None) -> nn.Module:
    """An mpcgen model in eval mode: a module as is, a saved student, or a teacher imported with ``preset``.

    Args:
        source: a model module, a student folder or a stage-1 Hugging Face checkpoint folder.
        preset: the preset a teacher is imported into (``vanilla``: exact); ignored for students and modules.
        expect_preset: raise unless the model's preset is this one (e.g. distillation resuming a student).

    Returns:
        The model; a tokenizer found beside the weights is attached as ``model.tokenizer``.
    """
    from mpcgen.models.hf import import_hf
    from mpcgen.models.io import from_pretrained

    if isinstance(source, nn.Module):
        if not hasattr(source, "config") or not hasattr(source.config, "arch"):
            raise MpcgenError(f"{type(source).__name__} is not an mpcgen model: import Hugging Face models with "
                              "mpcgen.models.import_hf or pass their folder")
        model = source.eval()
    elif isinstance(source, (str, os.PathLike)):
        kind = model_kind(source)
        if kind == "student":
            model = from_pretrained(source)
            _check_student_args(Path(source), model.config.preset)
        else:
            model = import_hf(source, preset=preset)
        logger.info("loaded %s %s (preset %s)", kind, source, model.config.preset)
    else:
        raise MpcgenError(f"pass a model or a model folder, not {type(source).__name__}")
    if expect_preset is not None and model.config.preset != expect_preset:
        raise MpcgenError(f"{source} holds a {model.config.preset!r} student, not {expect_preset!r}")
    return model


def _check_student_args(path: Path, preset: str) -> None:
    saved = read_training_args(path).get("preset")
    if saved is not None and saved != preset:
        raise MpcgenError(f"{path}: config.json says preset {preset!r} but {TRAINING_ARGS_FILE} says {saved!r}; the "
                          "checkpoint is inconsistent")


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


__all__ = ["KINDS", "ModelLike", "load_model", "load_tokenizer", "model_kind", "read_training_args"]
