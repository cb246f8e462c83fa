"""Students of stage-1 teachers: reading a teacher folder, building the student under a preset, loading it back.

:func:`build_student` is ``import_hf(teacher, preset)`` plus the per-layer attention choice and the ER resend norm;
the token helpers give the token part of a block-0 input, which the objective and ER training work on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpcgen.approx import TWO_QUAD_LITE_RANGES
from mpcgen.errors import MpcgenError
from mpcgen.models import PRESETS, import_hf
from mpcgen.models.decoder import token_input
from mpcgen.models.layers import AttentionCore
from mpcgen.train.families import SPECS


def read_teacher(teacher_dir: str | Path) -> dict[str, Any]:
    """The teacher's ``training_args.json``, after checking the folder is a stage-1 checkpoint we can distil."""
    path = Path(teacher_dir)
    if not (path / "config.json").is_file():
        raise MpcgenError(f"--teacher {path}: no config.json; pass a stage-1 checkpoint folder (nlg.finetune --out)")
    if not (path / "training_args.json").is_file():
        raise MpcgenError(f"--teacher {path}: no training_args.json; pass a stage-1 checkpoint folder")
    _check_arch(path, json.loads((path / "config.json").read_text()).get("model_type"))
    return json.loads((path / "training_args.json").read_text())


def _check_arch(teacher_dir: str | Path, model_type: Any) -> None:
    # Teachers are the training families; a family's name is its Hugging Face model_type.
    if model_type not in SPECS:
        raise MpcgenError(f"--teacher {teacher_dir} is a {model_type!r} model; distillation supports "
                          f"{sorted(SPECS)} teachers")


def decoder_layer_count(teacher_dir: str | Path) -> int:
    """Decoder layers of the teacher in ``teacher_dir`` (all its layers for GPT-2)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(teacher_dir, local_files_only=True)
    _check_arch(teacher_dir, config.model_type)
    return int(getattr(config, SPECS[config.model_type].decoder_layers))


def load_hf_teacher(teacher_dir: str | Path) -> nn.Module:
    """The stage-1 teacher as its Hugging Face model with eager attention (so it returns attention maps), eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(teacher_dir, local_files_only=True)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_pretrained(teacher_dir, attn_implementation="eager", local_files_only=True).eval()


def attention_layers(preset: str, n_layer: int, constant_layers: str | None, attention: str | None) -> list[str] | None:
    """Per-layer attention kinds from ``--constant-attention-layers`` (``all``, ``none`` or ``2,3``) and
    ``--attention`` (the content-dependent kind elsewhere); None when the preset's uniform choice stands.

    Layers are decoder layers; in an encoder-decoder a layer's kind covers its self- and cross-attention, and the
    encoder keeps the preset's attention (``ModelConfig.attention_layers``)."""
    preset_kind = PRESETS[preset]["attention"]
    if constant_layers is None and attention is None:
        return None
    other = attention or (preset_kind if preset_kind != "constant" else "2quad")
    if other == "constant":
        raise MpcgenError("--attention names the content-dependent attention of non-constant layers; "
                          "use --constant-attention-layers for constant ones")
    spec = (constant_layers or ("all" if preset_kind == "constant" else "none")).strip().lower()
    if spec == "all":
        chosen = set(range(n_layer))
    elif spec == "none":
        chosen = set()
    else:
        try:
            chosen = {int(x) for x in spec.split(",") if x.strip()}
        except ValueError:
            raise MpcgenError(f"--constant-attention-layers must be 'all', 'none' or layer indices like '2,3'; "
                              f"got {constant_layers!r}") from None
        bad = sorted(i for i in chosen if not 0 <= i < n_layer)
        if bad:
            raise MpcgenError(f"--constant-attention-layers {bad} out of range: the teacher has {n_layer} "
                              "(decoder) layers")
    return ["constant" if i in chosen else other for i in range(n_layer)]


def build_student(teacher_dir: str | Path, preset: str, *, constant_layers: str | None = None,
                  attention: str | None = None, resend_norm: str = "none", lite_range: str = "standard"
                  ) -> nn.Module:
    """The student: the teacher's weights under ``preset``'s approximations (training mode).

    Layers that keep a content-dependent attention keep the teacher's Q/K. With ``resend_norm`` set, the resend
    norm's gain starts at the token table's RMS, so a resent state has the scale of a real token embedding.
    ``lite_range``: 2quad-lite's reciprocal range (:data:`mpcgen.approx.TWO_QUAD_LITE_RANGES`).
    """
    if preset not in PRESETS:
        raise MpcgenError(f"--preset {preset!r} is not supported; choose one of {sorted(PRESETS)}")
    overrides: dict[str, Any] = {}
    layers = attention_layers(preset, decoder_layer_count(teacher_dir), constant_layers, attention)
    if layers is not None:
        overrides["attention_layers"] = layers
    if resend_norm != "none":
        if not PRESETS[preset]["embedding_resend"]:
            raise MpcgenError(f"--resend-norm {resend_norm} needs an Embedding Resending preset, not {preset!r}")
        overrides["resend_norm"] = resend_norm
    if lite_range not in TWO_QUAD_LITE_RANGES:
        raise MpcgenError(f"--lite-range {lite_range!r}: choose one of {sorted(TWO_QUAD_LITE_RANGES)}")
    if lite_range != "standard":  # the config's default
        overrides["lite_range"] = lite_range
    student = import_hf(teacher_dir, preset, overrides=overrides)
    if student.resend_norm is not None and student.resend_norm.weight is not None:
        with torch.no_grad():
            student.resend_norm.weight.fill_(embedding_rms(student))
    return student.train()


def token_table(model: nn.Module) -> nn.Module:
    """The model's token table (GPT-2 ``wte``; T5/BART ``shared``, which both sides of an encoder-decoder read)."""
    return model.wte if model.config.arch == "decoder" else model.shared


def token_embeddings(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Token part of a block-0 input (B, T, d), as the model's ``embed`` builds it before adding positions."""
    return token_input(token_table(model), model.embed_scale, ids, None, None)


def embedding_rms(model: nn.Module) -> float:
    """RMS of the token inputs the model sees (its token table times the embedding scale)."""
    return float(token_table(model).weight.detach().square().mean().sqrt()) * model.embed_scale


def has_constant_attention(model: nn.Module) -> bool:
    """Whether any attention of ``model`` (encoder, decoder or cross) is constant."""
    return any(isinstance(m, AttentionCore) and m.is_constant for m in model.modules())



def load_student(path: str | Path, expect_preset: str | None = None) -> nn.Module:
    """A saved student (eval mode) through the one loader; MpcgenError for a folder that holds no student, or one
    built with another preset than ``expect_preset``."""
    from mpcgen.models.loading import load_model, model_kind

    if model_kind(path) != "student":
        raise MpcgenError(f"{path} holds a Hugging Face teacher, not a distilled student")
    return load_model(path, expect_preset=expect_preset)


__all__ = ["attention_layers", "build_student", "decoder_layer_count", "embedding_rms", "has_constant_attention",
           "load_hf_teacher", "load_student", "read_teacher", "token_embeddings", "token_table"]
