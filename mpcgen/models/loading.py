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
from typing import Any, Callable

from torch import nn

from mpcgen.errors import MpcgenError

logger = logging.getLogger(__name__)

ModelLike = nn.Module | str | os.PathLike
KINDS = ("student", "teacher")
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TRAINING_ARGS_FILE = "training_args.json"


# Files a saved tokenizer may consist of: a folder holding any of them has a tokenizer, which must then load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model", "added_tokens.json")


def read_json_object(file: Path) -> dict[str, Any]:
    """The JSON object in ``file``; :class:`MpcgenError` naming the file if it is unreadable, not JSON or no object."""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except OSError as err:
        raise MpcgenError(f"{file}: cannot read it ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MpcgenError(f"{file} is not valid JSON ({err}): the file is damaged or truncated") from None
    if not isinstance(data, dict):
        raise MpcgenError(f"{file} must hold a JSON object, not a {type(data).__name__}")
    return data


def _read_config(path: Path) -> dict[str, Any] | None:
    # A missing config.json is "neither kind" (said by the caller); a damaged one is named as such.
    return read_json_object(path / "config.json") if (path / "config.json").is_file() else None


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
    path = Path(directory)
    if not path.is_dir():
        raise MpcgenError(f"tokenizer folder {path} does not exist")
    return read_tokenizer(path, required=True)


def read_tokenizer(path: Path, *, required: bool) -> Any:
    """The tokenizer saved in folder ``path``; None if it holds no tokenizer files and not ``required``.

    A folder with tokenizer files that do not load is an error either way (a damaged tokenizer must not pass for
    a weights-only folder). Each JSON file is parsed first, and ``tokenizer.json`` read by ``tokenizers`` itself,
    so the message names the file at fault.
    """
    import tokenizers
    import transformers

    present = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not present:
        if required:
            raise MpcgenError(f"{path} holds no tokenizer ({', '.join(TOKENIZER_FILES[:2])}): pass the folder the "
                              "model was saved with")
        return None
    for name in present:
        if name.endswith(".json"):
            read_json_object(path / name)
    # The Rust tokenizers library reports a wrong structure as a bare Exception: it is caught, not a bug of ours.
    if "tokenizer.json" in present:
        try:
            tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as err:  # noqa: BLE001 - see above
            raise MpcgenError(f"{path / 'tokenizer.json'} is not a valid tokenizer ({_first_line(err)})") from None
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - transformers passes the tokenizers library's errors on
        raise MpcgenError(f"{path}: the tokenizer files ({', '.join(present)}) do not load "
                          f"({type(err).__name__}: {_first_line(err)})") from None


def load_hf_model(path: Path, pick_class: Callable[[Any], Any]) -> tuple[nn.Module, Any]:
    """A Hugging Face model from checkpoint folder ``path`` and its config: ``(model, config)``.

    ``pick_class(config)`` returns the class to load (it may raise :class:`MpcgenError` for an unsupported one).
    Keys of ``config.json`` that its class does not define are accepted, as Hugging Face accepts them: valid
    checkpoints have them (GPT-2's Hub config carries ``n_ctx``; T5 models read ``decoder_start_token_id``, which
    ``T5Config`` does not define). Refused: a damaged ``config.json`` or weights file, values of the wrong type,
    and weights that do not fit the config (missing, unexpected or mis-shaped tensors, which Hugging Face would
    fill with random values, as a typo in a geometry key such as ``n_layer`` causes); that message names the
    unknown keys.
    """
    import transformers

    data = read_json_object(path / "config.json")
    errors = _hf_errors()
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except errors as err:
        raise MpcgenError(f"{path / 'config.json'}: {_first_line(err, join=True)}") from None
    unknown = _unknown_hf_keys(config, data)
    if unknown:  # INFO, not a warning: valid checkpoints have them (see the docstring)
        logger.info("%s: keys %s are not fields of %s", path / "config.json", unknown, type(config).__name__)
    cls = pick_class(config)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its load report would repeat what is checked below
    try:
        model, info = cls.from_pretrained(str(path), config=config, local_files_only=True, output_loading_info=True)
    except errors as err:
        files = [name for name in HF_WEIGHT_FILES if (path / name).is_file()]
        raise MpcgenError(f"{path}: cannot load the weights {files} (damaged or truncated? "
                          f"{type(err).__name__}: {_first_line(err, join=True)})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    bad = {what: sorted(map(str, info.get(key) or [])) for what, key in
           (("missing", "missing_keys"), ("unexpected", "unexpected_keys"), ("of another shape", "mismatched_keys"))}
    if any(bad.values()):
        listed = ", ".join(f"{len(v)} tensors {what} (e.g. {v[:3]})" for what, v in bad.items() if v)
        hint = f"; config.json has keys {type(config).__name__} does not know: {unknown}" if unknown else ""
        raise MpcgenError(f"{path}: the weights do not fit config.json ({listed}){hint}")
    return model.eval(), config


def _unknown_hf_keys(config: Any, data: dict[str, Any]) -> list[str]:
    """Keys of ``config.json`` that ``config``'s class neither defines nor maps to a field."""
    cls = type(config)
    known = set(cls().to_dict()) | set(getattr(cls, "attribute_map", {}))
    return sorted(map(str, set(data) - known))


def _hf_errors() -> tuple[type[BaseException], ...]:
    """What loading damaged or ill-typed Hugging Face files raises (configs are strict dataclasses)."""
    import pickle

    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    return (OSError, ValueError, TypeError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError,
            SafetensorError, StrictDataclassError)


def _first_line(err: BaseException, *, join: bool = False) -> str:
    """An exception's message on one line (``join``: all its lines, e.g. a validation error and its cause)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return " ".join(lines) if join else lines[0]


__all__ = ["KINDS", "ModelLike", "TOKENIZER_FILES", "load_hf_model", "load_model", "load_tokenizer", "model_kind",
           "read_json_object", "read_tokenizer", "read_training_args"]
