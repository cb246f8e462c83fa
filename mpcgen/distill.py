"""Stage 2 library: build a student from a fine-tuned teacher and the losses that distil the teacher into it.

Teachers: GPT-2 (decoder-only), T5 and BART (encoder-decoder), through one code path: :class:`Layout` says what the
decoder side of a training batch is (decoder-only: the whole sequence; encoder-decoder: the labels shifted right
behind ``decoder_start_token_id``, with the source as encoder input), and everything below works on it.

* :func:`build_student`: ``import_hf(teacher, preset)`` plus the per-layer attention choice and the ER resend norm;
  from :func:`teacher_statistics`, :func:`init_constant_attention` starts constant attention (decoder self-, encoder
  self- and cross-attention) from the teacher's mean attention maps and :func:`init_affine_norms` calibrates affine
  norms to the norms they replace (LayerNorm; T5's RMSNorm).
* :class:`Distiller`: the training objective (hooked into :class:`mpcgen.trainer.Trainer`)::

      L = (1 - lam) * (w_ce CE + w_kl KL_T + w_hid MSE) + lam * (1 - cos(r(h_t), E(x_{t+1})))

  CE on the target tokens; KL to the teacher's logits at temperature T (times T^2); hidden-state MSE per layer
  (encoder and decoder layers of encoder-decoders), each layer's MSE divided by the teacher state's mean square
  (deep GPT-2 residual streams are large, so raw MSE would drown the rest); ``lam`` > 0 only for Embedding Resending
  (ER) students, where ``r`` is the model's ``resend_token`` (resend norm) and ``E(x_{t+1})`` the (detached) token
  embedding of the token state t predicts, i.e. of the next decoder input.
  ER training also perturbs the input embeddings of generated positions (uniform noise of amplitude
  ``er_noise`` times the embedding table's RMS, then dropout ``er_dropout``) and can train on unrolled resent states
  (``er_unroll`` extra passes: scheduled sampling in embedding space, see :meth:`Distiller.er_inputs`); all of it on
  the decoder side, the encoder always reads the source tokens.
* :func:`load_student`: load a student checkpoint, refusing a different preset than expected.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.models import PRESETS, from_pretrained, import_hf
from mpcgen.models import hf as hf_import
from mpcgen.models.decoder import token_input
from mpcgen.models.layers import AttentionCore
from mpcgen.student_decoding import decoder_forward
from mpcgen.tokenization import IGNORE_INDEX

logger = logging.getLogger(__name__)

# HF model_type of the teachers distilled here -> their config field counting decoder layers (the layers
# --constant-attention-layers indexes).
DISTILL_ARCHS: dict[str, str] = {"gpt2": "n_layer", "t5": "num_decoder_layers", "bart": "decoder_layers"}
# Entries of M for keys a query never sees: exp(-20) ~ 2e-9, so softmax over ALL columns (DESIGN section 4) leaves
# the visible entries' mass ~1 even with 1024 positions.
MASKED_LOGIT = -20.0
MIN_MEAN_ATTENTION = 1e-6


@dataclass
class LossWeights:
    """Weights of the distillation objective (see the module docstring) and the ER training knobs."""

    ce: float = 1.0
    kl: float = 0.0
    hidden: float = 0.0
    temperature: float = 1.0
    er_lambda: float = 0.0
    er_noise: float = 0.0
    er_dropout: float = 0.0
    er_rollout_prob: float = 0.0
    er_unroll: int = 0

    def __post_init__(self) -> None:
        for name in ("ce", "kl", "hidden", "er_noise"):
            if getattr(self, name) < 0:
                raise MpcgenError(f"--{name.replace('_', '-')}{'-weight' if name in ('ce', 'kl', 'hidden') else ''} "
                                  f"must be >= 0, got {getattr(self, name)}")
        for name in ("er_lambda", "er_rollout_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise MpcgenError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.er_dropout < 1.0:
            raise MpcgenError(f"--er-dropout must be in [0, 1), got {self.er_dropout}")
        if self.temperature <= 0:
            raise MpcgenError(f"--temperature must be > 0, got {self.temperature}")
        if self.er_unroll < 0:
            raise MpcgenError(f"--er-unroll must be >= 0, got {self.er_unroll}")
        if self.ce + self.kl + self.hidden + self.er_lambda == 0:
            raise MpcgenError("every loss weight is 0: nothing to train")


# The papers' recipes. MPCformer and THE-X distil layer-wise (hidden states) and at the prediction layer (KL);
# MERGE fine-tunes with CE plus the ER alignment (lam 0.75) and noise + dropout on input embeddings (amplitude
# relative to the embedding RMS here; MERGE's range 0.2-0.7, dropout ~0.6).
_ER = dict(ce=1.0, er_lambda=0.75, er_noise=0.2, er_dropout=0.6)
PRESET_LOSSES: dict[str, dict[str, Any]] = {
    "vanilla": dict(ce=1.0),
    "mpcformer": dict(ce=0.0, kl=1.0, hidden=1.0),
    "mpcformer-2relu": dict(ce=0.0, kl=1.0, hidden=1.0),
    "thex": dict(ce=0.0, kl=1.0, hidden=1.0),
    "merge": _ER,
    "merge-er-only": _ER,
    "merge-mm-only": dict(ce=1.0),
}


def loss_weights(preset: str, **overrides: Any) -> LossWeights:
    """The preset's weights with every non-None override applied; ER knobs refused for non-ER presets."""
    base = dict(PRESET_LOSSES[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    weights = LossWeights(**base)
    if not PRESETS[preset]["embedding_resend"]:
        used = [k for k in ("er_lambda", "er_noise", "er_dropout", "er_rollout_prob", "er_unroll") if getattr(weights, k)]
        if used:
            raise MpcgenError(f"preset {preset!r} has no Embedding Resending; {used} only apply to ER presets "
                              f"{sorted(p for p in PRESETS if PRESETS[p]['embedding_resend'])}")
    return weights


# ---------------------------------------------------------------------------------------------- teacher, student


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
    if model_type not in DISTILL_ARCHS:
        raise MpcgenError(f"--teacher {teacher_dir} is a {model_type!r} model; distillation supports "
                          f"{sorted(DISTILL_ARCHS)} teachers")


def decoder_layer_count(teacher_dir: str | Path) -> int:
    """Decoder layers of the teacher in ``teacher_dir`` (all its layers for GPT-2)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(teacher_dir, local_files_only=True)
    _check_arch(teacher_dir, config.model_type)
    return int(getattr(config, DISTILL_ARCHS[config.model_type]))


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
                  attention: str | None = None, resend_norm: str = "none") -> nn.Module:
    """The student: the teacher's weights under ``preset``'s approximations (training mode).

    Layers that keep a content-dependent attention keep the teacher's Q/K. With ``resend_norm`` set, the resend
    norm's gain starts at the token table's RMS, so a resent state has the scale of a real token embedding.
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


# ---------------------------------------------------------------------------------------------------- batches


@dataclass
class Layout:
    """A collated training batch as the model reads it, for either architecture.

    ``ids`` (B, T): decoder-side input ids (decoder-only: ``<s> source <sep> target </s>``; encoder-decoder: the
    labels shifted right behind ``decoder_start_token_id``, as Hugging Face trains them); ``mask`` (B, T): real
    decoder-side positions; ``target`` (B, N): the id position t is trained to predict (IGNORE_INDEX where none),
    N = T - 1 for decoder-only models, T for encoder-decoders; ``generated`` (B, T): inputs that generation produces
    itself (the ones ER replaces by resent states); ``source``/``source_mask`` (B, S): the encoder input.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    generated: torch.Tensor
    source: torch.Tensor | None = None
    source_mask: torch.Tensor | None = None


def layout(config: Any, batch: dict[str, torch.Tensor]) -> Layout:
    """The :class:`Layout` of a :class:`mpcgen.training.Collator` batch for a model with ``config`` (a student's,
    or the exact config of a Hugging Face teacher)."""
    ids, am, labels = batch["input_ids"], batch["attention_mask"], batch.get("labels")
    if labels is None:  # statistics need no targets, but an encoder-decoder's decoder inputs are its labels
        if config.arch != "decoder":
            raise MpcgenError("an encoder-decoder batch needs labels: they are its decoder inputs")
        labels = torch.full_like(ids, IGNORE_INDEX)
    real = labels != IGNORE_INDEX  # (B, T)
    if config.arch == "decoder":
        return Layout(ids, am, labels[:, 1:], real)
    start = config.decoder_start_token_id
    if start is None:
        raise MpcgenError("the encoder-decoder config has no decoder_start_token_id: its decoder inputs are unknown")
    pad = config.pad_token_id if config.pad_token_id is not None else start
    first = labels.new_full((labels.size(0), 1), start)
    shifted = torch.cat([first, labels[:, :-1]], dim=1)  # (B, T)
    generated = torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], dim=1)  # input t > 0 is target t - 1
    return Layout(shifted.masked_fill(shifted == IGNORE_INDEX, pad), real.long(), labels, generated,
                  source=ids, source_mask=am)


def forward_layout(model: nn.Module, lay: Layout, x: torch.Tensor, *, return_hidden: bool = False
                   ) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Run a student (or the imported teacher) on ``lay`` with decoder-side token embeddings ``x`` (B, T, d).

    Returns the decoder's :class:`~mpcgen.models.ModelOutput` and, with ``return_hidden``, each block's output with
    the mask of its real positions: the encoder's blocks (encoder-decoders), then the decoder's.
    """
    source, layers = None, []
    if lay.source is not None:
        encoder_in = model.encoder.prepare(token_embeddings(model, lay.source), 0)
        source, states, _ = model.encoder(encoder_in, attention_mask=lay.source_mask, return_hidden=return_hidden)
        if return_hidden:
            layers.extend((s, lay.source_mask) for s in states[1:])
    out = decoder_forward(model, inputs_embeds=x, mask=lay.mask, source=source, source_mask=lay.source_mask,
                          return_hidden=return_hidden)
    if return_hidden:
        layers.extend((s, lay.mask) for s in out.hidden_states[1:])
    return out, layers


# ---------------------------------------------------------------------------------------- teacher statistics


@dataclass
class MeanAttention:
    """One teacher attention averaged over real query rows: ``mean`` (nh, T, S), ``counts`` (T,) how many examples
    have a real query at each position, ``causal`` (decoder self-attention) or not (encoder self-, cross-)."""

    mean: torch.Tensor
    counts: torch.Tensor
    causal: bool


@dataclass
class TeacherStats:
    """What the teacher does on real training examples, for initialising what the student replaces.

    ``attention``: per student attention module (``stack.blocks.1.attn``, ``encoder.blocks.0.attn``,
    ``decoder.blocks.0.cross_attn``, ...) the teacher's attention there; ``norms``: per student norm module, over
    the real tokens, the mean per-token mean and scale of the input of the teacher norm it was imported from
    (LayerNorm: mean and standard deviation; RMSNorm: 0 and the root mean square).
    """

    attention: dict[str, MeanAttention]
    norms: dict[str, tuple[float, float]]


def teacher_name_map(hf_teacher: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(exact config, student tensor name -> teacher tensor)`` from the importer's name map
    (:mod:`mpcgen.models.hf`), the one place that pairs teacher and student names."""
    family = hf_import.SUPPORTED.get(type(hf_teacher).__name__)
    if family is None:
        raise MpcgenError(f"cannot read a {type(hf_teacher).__name__} teacher; supported: "
                          f"{sorted(hf_import.SUPPORTED)}")
    config_fn, map_fn = hf_import._IMPORTERS[family]  # no public accessor in mpcgen.models yet
    exact = config_fn(hf_teacher)
    return exact, map_fn(hf_teacher, exact)


def norm_pairs(hf_teacher: nn.Module, mapped: dict[str, torch.Tensor]) -> dict[str, str]:
    """Student norm module -> the teacher norm module its gain is imported from (the same tensor in ``mapped``)."""
    owner = {p.data_ptr(): name.rsplit(".", 1)[0] for name, p in hf_teacher.named_parameters()
             if name.endswith(".weight") and p.dim() == 1}
    return {key.rsplit(".", 1)[0]: owner[t.data_ptr()] for key, t in mapped.items()
            if key.endswith(".weight") and t.dim() == 1 and t.data_ptr() in owner}


def _teacher_attentions(hf_teacher: nn.Module, lay: Layout) -> Iterable[tuple[str, torch.Tensor, torch.Tensor, bool]]:
    """Run the Hugging Face teacher on ``lay``; yield (student attention module, attention (B, nh, T, S), real query
    rows (B, T), causal) for each of its attentions."""
    if lay.source is None:
        out = hf_teacher(input_ids=lay.ids, attention_mask=lay.mask, output_attentions=True)
        groups = [("stack.blocks.{}.attn", out.attentions, lay.mask, True)]
    else:
        out = hf_teacher(input_ids=lay.source, attention_mask=lay.source_mask, decoder_input_ids=lay.ids,
                         decoder_attention_mask=lay.mask, output_attentions=True)
        groups = [("encoder.blocks.{}.attn", out.encoder_attentions, lay.source_mask, False),
                  ("decoder.blocks.{}.attn", out.decoder_attentions, lay.mask, True),
                  ("decoder.blocks.{}.cross_attn", out.cross_attentions, lay.mask, False)]
    for pattern, maps, rows, causal in groups:
        for i, a in enumerate(maps):
            yield pattern.format(i), a, rows, causal


def _pad_to(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """``x`` zero-padded at the end of every dimension to ``shape``."""
    pad: list[int] = []
    for have, want in zip(reversed(x.shape), reversed(shape)):
        pad += [0, want - have]
    return F.pad(x, pad)


@torch.no_grad()
def teacher_statistics(hf_teacher: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> TeacherStats:
    """Run a Hugging Face teacher (GPT-2, T5 or BART; :func:`load_hf_teacher` loads it with eager attention, so it
    returns attentions) on right-padded collated ``batches`` and collect :class:`TeacherStats`."""
    batches = list(batches)
    if not batches:
        raise MpcgenError("no examples to collect the teacher's statistics over")
    exact, mapped = teacher_name_map(hf_teacher)
    sums: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
    norm_sums: dict[str, torch.Tensor] = {}
    current: dict[str, Layout] = {}

    def hook(name: str):
        on_source = name.startswith("encoder.")

        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].float()  # (B, T, d)
            lay = current["layout"]
            real = (lay.source_mask if on_source else lay.mask).float()  # (B, T)
            if exact.norm == "rmsnorm":
                mu, second = torch.zeros_like(x[..., 0]), x.square().mean(-1)
            else:
                mu, second = x.mean(-1), x.var(-1, unbiased=False)
            sigma = (second + exact.norm_eps).sqrt()
            stats = torch.stack([(mu * real).sum(), (sigma * real).sum(), real.sum()])
            norm_sums[name] = norm_sums.get(name, torch.zeros(3)) + stats
        return record

    modules = dict(hf_teacher.named_modules())
    handles = [modules[t].register_forward_pre_hook(hook(s)) for s, t in norm_pairs(hf_teacher, mapped).items()]
    hf_teacher.eval()
    try:
        for batch in batches:
            lay = current["layout"] = layout(exact, batch)
            for name, a, rows, causal in _teacher_attentions(hf_teacher, lay):
                rows = rows.float()
                total = (a.float() * rows[:, None, :, None]).sum(0)  # (nh, T, S)
                count = rows.sum(0)  # (T,)
                if name in sums:  # batches differ in length: grow to the longest
                    shape = [max(x, y) for x, y in zip(sums[name][0].shape, total.shape)]
                    total = _pad_to(sums[name][0], shape) + _pad_to(total, shape)
                    count = _pad_to(sums[name][1], shape[1:2]) + _pad_to(count, shape[1:2])
                sums[name] = (total, count, causal)
    finally:
        for h in handles:
            h.remove()
    attention = {n: MeanAttention(s / c.clamp(min=1.0)[None, :, None], c, causal) for n, (s, c, causal) in sums.items()}
    norms = {n: (float(v[0] / v[2]), float(v[1] / v[2])) for n, v in norm_sums.items()}
    return TeacherStats(attention, norms)


def init_affine_norms(student: nn.Module, stats: TeacherStats) -> int:
    """Calibrate affine / centred norms that replace the teacher's norms (their gamma, beta are imported): with the
    teacher's average input mean mu and scale sigma (RMSNorm: mu = 0, sigma the RMS),
    ``norm(x) ~ (x - mu) / sigma * gamma + beta``, so affine gets ``gamma / sigma`` and ``beta - gamma mu / sigma``
    (centred subtracts the mean itself: ``gamma / sigma``, ``beta``). Without this, an imported affine norm multiplies
    the residual stream by gamma instead of normalising it and the first losses are astronomically large.
    Returns the number of norms set."""
    modules = dict(student.named_modules())
    done = 0
    for name, (mu, sigma) in stats.norms.items():
        norm = modules.get(name)
        if norm is None or norm.kind not in ("affine", "centered"):
            continue
        with torch.no_grad():
            gamma = norm.weight.clone()
            norm.weight.copy_(gamma / sigma)
            if norm.kind == "affine":
                norm.bias.sub_(gamma * (mu / sigma))
        done += 1
    return done


def constant_logits_from_mean(mean: torch.Tensor, counts: torch.Tensor, n: int, *, causal: bool = True
                              ) -> torch.Tensor:
    """``M`` (h, n, n) with ``softmax(M)`` ~ ``mean`` (h, T, S) on the observed rows (``counts`` > 0).

    ``softmax`` runs over ALL ``n`` columns before the mask (DESIGN section 4), so keys a row never sees get
    :data:`MASKED_LOGIT` to keep the visible mass ~1: later keys under a causal mask, keys past the longest observed
    source (S) otherwise (encoder self- and cross-attention, masked by source padding). Rows never observed start
    uniform over the keys they may see (causal: 0 .. t; otherwise the S observed ones).
    """
    h, seen_q, seen_k = mean.size(0), min(mean.size(1), n), min(mean.size(2), n)
    rows = torch.arange(n)[:, None]
    cols = torch.arange(n)[None, :]
    visible = cols <= rows if causal else (cols < seen_k).expand(n, n)  # (n, n)
    width = rows + 1 if causal else torch.full_like(rows, seen_k)  # visible keys per row
    uniform = -torch.log(width.float()).expand(n, n)
    masked = torch.full((n, n), MASKED_LOGIT)
    m = torch.where(visible, uniform, masked).expand(h, n, n).clone()
    observed = counts[:seen_q] > 0
    block = mean[:, :seen_q, :seen_k].clamp(min=MIN_MEAN_ATTENTION).log()
    block = torch.where(visible[:seen_q, :seen_k], block, masked[:seen_q, :seen_k])
    m[:, :seen_q, :seen_k] = torch.where(observed[None, :, None], block, m[:, :seen_q, :seen_k])
    return m


def init_constant_attention(student: nn.Module, stats: TeacherStats) -> int:
    """Set every constant attention's ``M`` (decoder self-, encoder self- and cross-attention) from the teacher's
    mean attention there (heads averaged when shared); returns the number of attentions set."""
    modules = dict(student.named_modules())
    done = 0
    for name, teacher in stats.attention.items():
        module = modules.get(name)
        if module is None or not module.core.is_constant:
            continue
        core = module.core
        if core.frozen:
            raise MpcgenError("cannot initialise a frozen (inference-form) constant attention")
        heads, n = core.const_logits.size(0), core.const_logits.size(-1)
        mean = teacher.mean if heads == teacher.mean.size(0) else teacher.mean.mean(0, keepdim=True)
        if mean.size(0) != heads:
            raise MpcgenError(f"{name}: teacher has {teacher.mean.size(0)} heads, student constant attention {heads}")
        with torch.no_grad():
            core.const_logits.copy_(constant_logits_from_mean(mean, teacher.counts, n, causal=teacher.causal))
        done += 1
    return done


def param_groups(model: nn.Module, weight_decay: float, *, reciprocal_lr_scale: float) -> list[dict]:
    """AdamW groups: decay on matrices (as stage 1), none on vectors; THE-X's reciprocal estimator apart.

    Its weights span 1e-6 .. 1e3 (the 1/x interpolant's slope changes and knots), so Adam's per-weight steps of
    size ~lr wreck it at ordinary learning rates: it trains at ``lr * reciprocal_lr_scale``, or not at all for 0.
    """
    groups: dict[str, list] = {"decay": [], "rest": [], "recip": []}
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1].startswith("recip_"):
            p.requires_grad_(reciprocal_lr_scale > 0)
            if reciprocal_lr_scale > 0:
                groups["recip"].append(p)
        elif p.requires_grad:
            groups["decay" if p.dim() >= 2 else "rest"].append(p)
    out = [{"params": groups["decay"], "weight_decay": weight_decay}, {"params": groups["rest"], "weight_decay": 0.0}]
    if groups["recip"]:
        out.append({"params": groups["recip"], "weight_decay": 0.0, "lr_scale": reciprocal_lr_scale})
    return out


def load_student(path: str | Path, expect_preset: str | None = None) -> nn.Module:
    """A saved student (eval mode); MpcgenError when it was built with another preset than ``expect_preset``."""
    model = from_pretrained(path)
    if expect_preset is not None and model.config.preset != expect_preset:
        raise MpcgenError(f"{path} holds a {model.config.preset!r} student, not {expect_preset!r}")
    args_path = Path(path) / "training_args.json"
    if args_path.is_file():
        saved = json.loads(args_path.read_text()).get("preset")
        if saved is not None and saved != model.config.preset:
            raise MpcgenError(f"{path}: config.json says preset {model.config.preset!r} but training_args.json says "
                              f"{saved!r}; the checkpoint is inconsistent")
    return model


# ------------------------------------------------------------------------------------------------------ the loss


class Distiller:
    """The distillation objective for a student of either architecture; ``loss`` and ``val_loss`` plug into the
    Trainer."""

    def __init__(self, teacher: nn.Module | None, weights: LossWeights, *, embedding_resend: bool) -> None:
        self.teacher = teacher.eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        if (weights.kl or weights.hidden) and teacher is None:
            raise MpcgenError("the KL and hidden-state losses need the teacher")
        self.w = weights
        self.er = embedding_resend and weights.er_lambda > 0
        self.rms: float | None = None

    # -- inputs ---------------------------------------------------------------------------------------------------

    def er_inputs(self, model: nn.Module, tok: torch.Tensor, lay: Layout) -> torch.Tensor:
        """Training inputs of an ER student: perturbed token embeddings at generated positions, and (with
        ``er_unroll``) resent states in place of some of them.

        Unrolling: ``er_unroll`` no-grad passes; after each, a random ``er_rollout_prob`` share of the generated
        positions (drawn once) takes the resent state of the previous position from that pass. With probability 1
        and k passes, the first k generated positions see exactly what the rollout feeds them.
        """
        w = self.w
        if self.rms is None:
            self.rms = embedding_rms(model)
        generated = lay.generated
        mask = generated[..., None].to(tok.dtype)  # (B, T, 1)
        x = tok
        if w.er_noise:
            x = x + (torch.rand_like(x) * 2 - 1) * (w.er_noise * self.rms) * mask
        if w.er_dropout:
            x = torch.where(mask.bool(), F.dropout(x, w.er_dropout, training=True), x)
        if w.er_unroll and w.er_rollout_prob:
            chosen = generated & (torch.rand(generated.shape) < w.er_rollout_prob)
            mixed = x
            for _ in range(w.er_unroll):
                with torch.no_grad():
                    h = forward_layout(model, lay, mixed)[0].hidden
                    resent = F.pad(model.resend_token(h)[:, :-1], (0, 0, 1, 0))  # input t <- state t-1
                mixed = torch.where(chosen[..., None], resent.to(x.dtype), x)
            x = mixed
        return x

    # -- objective ------------------------------------------------------------------------------------------------

    def objective(self, model: nn.Module, batch: dict[str, torch.Tensor], *, train: bool
                  ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted loss and its components; ``train=False`` drops the ER perturbations and unrolling."""
        w = self.w
        lay = layout(model.config, batch)
        tok = token_embeddings(model, lay.ids)
        x = self.er_inputs(model, tok, lay) if (self.er and train) else tok
        out, layers = forward_layout(model, lay, x, return_hidden=w.hidden > 0)
        target = lay.target
        n_pred = target.size(1)  # positions that predict a token: (B, N)
        mask = (target != IGNORE_INDEX).float()  # (B, N)
        n = mask.sum().clamp(min=1.0)
        logits = out.logits[:, :n_pred].float()
        parts: dict[str, torch.Tensor] = {}
        base = logits.new_zeros(())
        if w.ce:
            parts["ce"] = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                          ignore_index=IGNORE_INDEX)
            base = base + w.ce * parts["ce"]
        if w.kl or w.hidden:
            with torch.no_grad():
                ref, ref_layers = forward_layout(self.teacher, lay, token_embeddings(self.teacher, lay.ids),
                                                 return_hidden=w.hidden > 0)
        if w.kl:
            t = w.temperature
            log_p_s = F.log_softmax(logits / t, dim=-1)
            log_p_t = F.log_softmax(ref.logits[:, :n_pred].float() / t, dim=-1)
            kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B, N)
            parts["kl"] = (kl * mask).sum() / n * t * t
            base = base + w.kl * parts["kl"]
        if w.hidden:
            mse = []
            for (s, real), (r, _) in zip(layers, ref_layers):
                real = real.float()[..., None]  # (B, T, 1)
                denom = (r.float().square() * real).sum() / (real.sum() * r.size(-1))
                err = ((s.float() - r.float()).square() * real).sum() / (real.sum() * r.size(-1))
                mse.append(err / denom.clamp(min=1e-6))
            parts["hidden"] = torch.stack(mse).mean()
            base = base + w.hidden * parts["hidden"]
        total = base
        if self.er:
            resent = model.resend_token(out.hidden[:, :n_pred]).float()
            wanted = token_embeddings(model, target.clamp(min=0)).detach().float()  # E(next input)
            cos = F.cosine_similarity(resent, wanted, dim=-1)  # (B, N)
            parts["er_cos"] = ((1.0 - cos) * mask).sum() / n
            total = (1.0 - w.er_lambda) * base + w.er_lambda * parts["er_cos"]
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss (Trainer hook)."""
        return self.objective(model, batch, train=True)

    @torch.no_grad()
    def val_loss(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
        """Mean objective over ``batches`` without ER perturbations, weighted by target tokens (Trainer hook)."""
        was = model.training
        model.eval()
        total, count = 0.0, 0
        for batch in batches:
            loss, _ = self.objective(model, batch, train=False)
            n = int((layout(model.config, batch).target != IGNORE_INDEX).sum())
            total, count = total + float(loss) * n, count + n
        model.train(was)
        return total / max(count, 1) if math.isfinite(total) else float("nan")


def weights_dict(weights: LossWeights) -> dict[str, Any]:
    """JSON-able loss weights (for training_args.json)."""
    return dataclasses.asdict(weights)


__all__ = ["DISTILL_ARCHS", "Distiller", "Layout", "LossWeights", "MeanAttention", "PRESET_LOSSES", "TeacherStats",
           "attention_layers", "build_student", "constant_logits_from_mean", "decoder_layer_count", "embedding_rms",
           "forward_layout", "has_constant_attention", "init_affine_norms", "init_constant_attention", "layout",
           "load_hf_teacher", "load_student", "loss_weights", "norm_pairs", "param_groups", "read_teacher",
           "teacher_name_map", "teacher_statistics", "token_embeddings", "token_table", "weights_dict"]
