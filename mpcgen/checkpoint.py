"""Checkpoint IO for training stages: the best model in Hugging Face format and resume states (atomic writes by
:mod:`mpcgen.io`).

Layout of an output folder ``<out>``:

* ``<out>/`` top level: the best model (``save_pretrained``: ``config.json``, ``model.safetensors``, tokenizer files),
  ``training_args.json`` and ``trainer_state.json``. Each file is written into a temp folder inside ``<out>`` and moved
  over the old one with ``os.replace`` (atomic per file); ``trainer_state.json`` goes last, so it never names weights
  that are not there yet. Between two best saves only the weights and the state files change.
* ``<out>/resume/``: the latest training state (``model.safetensors``, ``optimizer.safetensors`` + ``state.json``).
  Written as a whole folder and swapped in with two renames; if a run dies between them, the previous state is
  still at ``<out>/resume.old`` and :func:`find_resume` picks it up.

No pickles: tensors go to safetensors, everything else (step, schedule, RNG seeds, accountant history) to JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from mpcgen.errors import MpcgenError
# write_json / read_json stay importable from here for the modules that still do so.
from mpcgen.io import read_json, replacing_files, replacing_folder, write_json

RESUME_DIR = "resume"


def check_resume_settings(resume_dir: Path, args: dict[str, Any], keys: Sequence[str],
                          defaults: Optional[Mapping[str, Any]] = None) -> None:
    """Refuse to resume from ``resume_dir`` when any of ``keys`` differs from the arguments it was written with
    (``defaults``: the values of settings that state predates)."""
    saved = {**(defaults or {}), **read_json(Path(resume_dir) / "state.json")["args"]}
    diff = {k: (saved.get(k), args[k]) for k in keys if saved.get(k) != args[k]}
    if diff:
        raise MpcgenError(f"{resume_dir} was written with different settings {diff} (saved, now): use another "
                          "--out or --resume no to start over")


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied embeddings): store independent contiguous copies.
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def save_best(out: Path, model, tokenizer, *, training_args: dict, trainer_state: dict) -> None:
    """Save the best model (plain HF format) and the two JSON files at the top level of ``out``."""
    out = Path(out)
    with replacing_files(out, prefix=".tmp-best-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    write_json(out / "training_args.json", training_args)
    write_json(out / "trainer_state.json", trainer_state)


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state dict -> (flat tensors for safetensors, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors, meta = {}, {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                meta[f"{pid}.{key}"] = value
    return _tensors(tensors), {"param_groups": sd["param_groups"], "scalars": meta}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_resume(
    out: Path, model_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, state: dict, *, config=None,
    tokenizer=None,
) -> None:
    """Write ``<out>/resume/`` (weights, optimizer, JSON ``state``; model config and tokenizer if given) as one unit.

    With the config and tokenizer inside, a resumed run rebuilds its model without the original source (a Hub name
    or a freshly trained BPE tokenizer).
    """
    with replacing_folder(Path(out) / RESUME_DIR) as tmp:
        if config is not None:
            config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(_tensors(model_state), str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _optimizer_split(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        save_file(rng, str(tmp / "rng.safetensors"))
        write_json(tmp / "state.json", {**state, "optimizer": opt_meta})


def find_resume(out: Path) -> Path | None:
    """The resume folder of ``out`` (falling back to ``resume.old`` left by an interrupted swap), or None."""
    for name in (RESUME_DIR, f"{RESUME_DIR}.old"):
        path = Path(out) / name
        if (path / "state.json").is_file():
            return path
    return None


def load_resume(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read a resume folder: ``(model_state, optimizer_state_dict, state)``; restores the torch RNG."""
    path = Path(path)
    state = read_json(path / "state.json")
    optimizer_sd = _optimizer_join(load_file(str(path / "optimizer.safetensors")), state.pop("optimizer"))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    return load_file(str(path / "model.safetensors")), optimizer_sd, state
