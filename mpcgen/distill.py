"""Stage 2 library: build a student from a fine-tuned teacher and the losses that distil the teacher into it.

* :func:`build_student`: ``import_hf(teacher, preset)`` plus the per-layer attention choice and the ER resend norm;
  from :func:`teacher_statistics`, :func:`init_constant_attention` starts constant attention from the teacher's mean
  attention maps and :func:`init_affine_norms` calibrates affine norms to the LayerNorms they replace.
* :class:`Distiller`: the training objective (hooked into :class:`mpcgen.trainer.Trainer`)::

      L = (1 - lam) * (w_ce CE + w_kl KL_T + w_hid MSE) + lam * (1 - cos(r(h_t), E(x_{t+1})))

  CE on the target tokens; KL to the teacher's logits at temperature T (times T^2); hidden-state MSE per layer,
  each layer's MSE divided by the teacher state's mean square (deep GPT-2 residual streams are large, so raw MSE
  would drown the rest); ``lam`` > 0 only for Embedding Resending (ER) students, where ``r`` is the model's
  ``resend_token`` (resend norm) and ``E(x)`` the (detached) token embedding of the next input.
  ER training also perturbs the input embeddings of generated positions (uniform noise of amplitude
  ``er_noise`` times the embedding table's RMS, then dropout ``er_dropout``) and can train on unrolled resent states
  (``er_unroll`` extra passes: scheduled sampling in embedding space, see :meth:`Distiller.er_inputs`).
* :func:`load_student`: load a student checkpoint, refusing a different preset than expected.

Only decoder-only (GPT-2) teachers are distilled here so far; encoder-decoder ones are refused with a message.
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
from mpcgen.tokenization import IGNORE_INDEX

logger = logging.getLogger(__name__)

DISTILL_ARCHS = ("gpt2",)  # HF model_type values whose students this module can train
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
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type not in DISTILL_ARCHS:
        raise MpcgenError(f"--teacher {path} is a {model_type!r} model; distillation supports {list(DISTILL_ARCHS)} "
                          "teachers so far (encoder-decoder students are not implemented in stage 2 yet)")
    return json.loads((path / "training_args.json").read_text())


def attention_layers(preset: str, n_layer: int, constant_layers: str | None, attention: str | None) -> list[str] | None:
    """Per-layer attention kinds from ``--constant-attention-layers`` (``all``, ``none`` or ``2,3``) and
    ``--attention`` (the content-dependent kind elsewhere); None when the preset's uniform choice stands."""
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
            raise MpcgenError(f"--constant-attention-layers {bad} out of range: the teacher has {n_layer} layers")
    return ["constant" if i in chosen else other for i in range(n_layer)]


def build_student(teacher_dir: str | Path, preset: str, *, constant_layers: str | None = None,
                  attention: str | None = None, resend_norm: str = "none") -> nn.Module:
    """The student: the teacher's weights under ``preset``'s approximations (training mode).

    Layers that keep a content-dependent attention keep the teacher's Q/K. With ``resend_norm`` set, the resend
    norm's gain starts at the token table's RMS, so a resent state has the scale of a real token embedding.
    """
    if preset not in PRESETS:
        raise MpcgenError(f"--preset {preset!r} is not supported; choose one of {sorted(PRESETS)}")
    n_layer = json.loads((Path(teacher_dir) / "config.json").read_text()).get("n_layer")
    overrides: dict[str, Any] = {}
    layers = attention_layers(preset, int(n_layer), constant_layers, attention)
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


def embedding_rms(model: nn.Module) -> float:
    """RMS of the token inputs the model sees (its token table times the embedding scale)."""
    table = model.wte.weight if hasattr(model, "wte") else model.shared.weight
    return float(table.detach().square().mean().sqrt()) * model.embed_scale


@dataclass
class TeacherStats:
    """What the teacher does on real training examples, for initialising what the student replaces.

    ``attention[i]``: layer i's softmax attention (nh, T, T) averaged over the real query rows; ``counts`` (T,): how
    many examples have a real token at each position; ``norms``: per LayerNorm (HF module name) the mean over real
    tokens of its input's per-token mean and standard deviation.
    """

    attention: list[torch.Tensor]
    counts: torch.Tensor
    norms: dict[str, tuple[float, float]]


@torch.no_grad()
def teacher_statistics(hf_teacher: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> TeacherStats:
    """Run a Hugging Face GPT-2 teacher (loaded with ``attn_implementation="eager"``, so it returns attentions) on
    right-padded ``batches`` and collect :class:`TeacherStats`."""
    batches = list(batches)
    if not batches:
        raise MpcgenError("no examples to collect the teacher's statistics over")
    t_max = max(b["attention_mask"].size(1) for b in batches)
    counts = torch.zeros(t_max)
    sums: list[torch.Tensor] | None = None
    norm_sums: dict[str, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].float()  # (B, T, d)
            sigma = (x.var(-1, unbiased=False) + module.eps).sqrt()
            real = current["mask"]
            stats = torch.stack([(x.mean(-1) * real).sum(), (sigma * real).sum(), real.sum()])
            norm_sums[name] = norm_sums.get(name, torch.zeros(3)) + stats
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in hf_teacher.named_modules()
               if isinstance(m, nn.LayerNorm)]
    hf_teacher.eval()
    try:
        for batch in batches:
            am = batch["attention_mask"]
            t = am.size(1)
            current["mask"] = am.float()
            out = hf_teacher(input_ids=batch["input_ids"], attention_mask=am, output_attentions=True)
            if sums is None:
                sums = [torch.zeros(a.size(1), t_max, t_max) for a in out.attentions]
            rows = am.float()  # (B, T)
            for i, a in enumerate(out.attentions):  # (B, nh, T, T)
                sums[i][:, :t, :t] += (a.float() * rows[:, None, :, None]).sum(0)  # (nh, T, T)
            counts[:t] += rows.sum(0)
    finally:
        for h in handles:
            h.remove()
    attention = [s / counts.clamp(min=1.0)[None, :, None] for s in sums]
    norms = {n: (float(v[0] / v[2]), float(v[1] / v[2])) for n, v in norm_sums.items()}
    return TeacherStats(attention, counts, norms)


# Student norm -> the teacher LayerNorm it replaces (GPT-2 names).
def _gpt2_norm_pairs(n_layer: int) -> dict[str, str]:
    pairs = {"stack.final_norm": "transformer.ln_f"}
    for i in range(n_layer):
        pairs[f"stack.blocks.{i}.norm1"] = f"transformer.h.{i}.ln_1"
        pairs[f"stack.blocks.{i}.norm2"] = f"transformer.h.{i}.ln_2"
    return pairs


def init_affine_norms(student: nn.Module, stats: TeacherStats) -> int:
    """Calibrate affine / centred norms that replace the teacher's LayerNorms (their gamma, beta are imported):
    with the teacher's average input mean mu and standard deviation sigma,
    ``LN(x) ~ (x - mu) / sigma * gamma + beta``, so affine gets ``gamma / sigma`` and ``beta - gamma mu / sigma``
    (centred subtracts the mean itself: ``gamma / sigma``, ``beta``). Without this, an imported affine norm multiplies
    the residual stream by gamma instead of normalising it and the first losses are astronomically large.
    Returns the number of norms set."""
    modules = dict(student.named_modules())
    done = 0
    for name, teacher_name in _gpt2_norm_pairs(student.config.n_layer).items():
        norm = modules.get(name)
        if norm is None or norm.kind not in ("affine", "centered") or teacher_name not in stats.norms:
            continue
        mu, sigma = stats.norms[teacher_name]
        with torch.no_grad():
            gamma = norm.weight.clone()
            norm.weight.copy_(gamma / sigma)
            if norm.kind == "affine":
                norm.bias.sub_(gamma * (mu / sigma))
        done += 1
    return done


def constant_logits_from_mean(mean: torch.Tensor, counts: torch.Tensor, n: int) -> torch.Tensor:
    """``M`` (h, n, n) with ``softmax(M)`` ~ ``mean`` on the observed rows, uniform over visible keys elsewhere.

    ``softmax`` runs over ALL ``n`` columns before the causal mask (DESIGN section 4), so keys a row never sees get
    :data:`MASKED_LOGIT` to keep the visible mass ~1.
    """
    h, seen = mean.size(0), min(mean.size(-1), n)
    rows = torch.arange(n)[:, None]
    cols = torch.arange(n)[None, :]
    visible = cols <= rows  # (n, n)
    uniform = -torch.log((rows + 1).float()).expand(n, n)
    m = torch.where(visible, uniform, torch.full((n, n), MASKED_LOGIT)).expand(h, n, n).clone()
    observed = counts[:seen] > 0
    block = mean[:, :seen, :seen].clamp(min=MIN_MEAN_ATTENTION).log()
    block = torch.where(visible[:seen, :seen], block, torch.full_like(block, MASKED_LOGIT))
    m[:, :seen, :seen] = torch.where(observed[None, :, None], block, m[:, :seen, :seen])
    return m


def init_constant_attention(student: nn.Module, stats: TeacherStats) -> int:
    """Set every constant layer's ``M`` from the teacher's mean attention (heads averaged when shared); returns the
    number of layers set."""
    means, counts = stats.attention, stats.counts
    done = 0
    for i, block in enumerate(student.stack.blocks):
        core = block.attn.core
        if not core.is_constant:
            continue
        if core.frozen:
            raise MpcgenError("cannot initialise a frozen (inference-form) constant attention")
        heads, n = core.const_logits.size(0), core.const_logits.size(-1)
        mean = means[i] if heads == means[i].size(0) else means[i].mean(0, keepdim=True)
        if mean.size(0) != heads:
            raise MpcgenError(f"layer {i}: teacher has {means[i].size(0)} heads, student constant attention {heads}")
        with torch.no_grad():
            core.const_logits.copy_(constant_logits_from_mean(mean, counts, n))
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
    """The distillation objective for a decoder-only student; ``loss`` and ``val_loss`` plug into the Trainer."""

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

    def token_inputs(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """Token part of the block-0 input (B, T, d), as ``embed`` builds it before adding positions."""
        return model.wte(ids) * model.embed_scale if model.embed_scale != 1.0 else model.wte(ids)

    def er_inputs(self, model: nn.Module, tok: torch.Tensor, generated: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
        """Training inputs of an ER student: perturbed token embeddings at generated positions, and (with
        ``er_unroll``) resent states in place of some of them.

        Unrolling: ``er_unroll`` no-grad passes; after each, a random ``er_rollout_prob`` share of the generated
        positions (drawn once) takes the resent state of the previous position from that pass. With probability 1
        and k passes, the first k generated positions see exactly what the rollout feeds them.
        """
        w = self.w
        if self.rms is None:
            self.rms = embedding_rms(model)
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
                    h = model(inputs_embeds=mixed, attention_mask=attention_mask, use_cache=False).hidden
                    resent = F.pad(model.resend_token(h)[:, :-1], (0, 0, 1, 0))  # input t <- state t-1
                mixed = torch.where(chosen[..., None], resent.to(x.dtype), x)
            x = mixed
        return x

    # -- objective ------------------------------------------------------------------------------------------------

    def objective(self, model: nn.Module, batch: dict[str, torch.Tensor], *, train: bool
                  ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted loss and its components; ``train=False`` drops the ER perturbations and unrolling."""
        w = self.w
        ids, am, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        tok = self.token_inputs(model, ids)
        x = self.er_inputs(model, tok, labels != IGNORE_INDEX, am) if (self.er and train) else tok
        out = model(inputs_embeds=x, attention_mask=am, use_cache=False, return_hidden=w.hidden > 0)
        target = labels[:, 1:]
        mask = (target != IGNORE_INDEX).float()  # (B, T-1): positions predicting a target token
        n = mask.sum().clamp(min=1.0)
        logits = out.logits[:, :-1].float()
        parts: dict[str, torch.Tensor] = {}
        base = logits.new_zeros(())
        if w.ce:
            parts["ce"] = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                          ignore_index=IGNORE_INDEX)
            base = base + w.ce * parts["ce"]
        if w.kl or w.hidden:
            with torch.no_grad():
                ref = self.teacher(input_ids=ids, attention_mask=am, use_cache=False, return_hidden=w.hidden > 0)
        if w.kl:
            t = w.temperature
            log_p_s = F.log_softmax(logits / t, dim=-1)
            log_p_t = F.log_softmax(ref.logits[:, :-1].float() / t, dim=-1)
            kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B, T-1)
            parts["kl"] = (kl * mask).sum() / n * t * t
            base = base + w.kl * parts["kl"]
        if w.hidden:
            real = am.float()[..., None]  # (B, T, 1)
            mse = []
            for s, r in zip(out.hidden_states[1:], ref.hidden_states[1:]):
                denom = (r.float().square() * real).sum() / (real.sum() * r.size(-1))
                err = ((s.float() - r.float()).square() * real).sum() / (real.sum() * r.size(-1))
                mse.append(err / denom.clamp(min=1e-6))
            parts["hidden"] = torch.stack(mse).mean()
            base = base + w.hidden * parts["hidden"]
        total = base
        if self.er:
            resent = model.resend_token(out.hidden[:, :-1]).float()
            cos = F.cosine_similarity(resent, tok[:, 1:].detach().float(), dim=-1)  # (B, T-1)
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
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total, count = total + float(loss) * n, count + n
        model.train(was)
        return total / max(count, 1) if math.isfinite(total) else float("nan")


def weights_dict(weights: LossWeights) -> dict[str, Any]:
    """JSON-able loss weights (for training_args.json)."""
    return dataclasses.asdict(weights)


__all__ = ["DISTILL_ARCHS", "Distiller", "LossWeights", "PRESET_LOSSES", "attention_layers", "build_student",
           "TeacherStats", "constant_logits_from_mean", "embedding_rms", "init_affine_norms", "init_constant_attention",
           "load_student", "loss_weights", "param_groups", "read_teacher", "teacher_statistics", "weights_dict"]
