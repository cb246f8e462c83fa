"""The distillation objective, for students of either architecture, and what it plugs into the training loop.

:class:`Layout` says what the decoder side of a training batch is (decoder-only: the whole sequence;
encoder-decoder: the labels shifted right behind ``decoder_start_token_id``, with the source as encoder input), and
everything below works on it. :class:`Distiller` is the objective (hooked into :class:`mpcgen.train.Trainer`)::

    L = (1 - lam) * (w_ce CE + w_kl KL_T + w_hid MSE) + lam * (1 - cos(r(h_t), E(x_{t+1})))
        + w_self * relu(cos(r(h_t), E(x_t)))

CE on the target tokens; KL to the teacher's logits at temperature T (times T^2); hidden-state MSE per layer
(encoder and decoder layers of encoder-decoders), each layer's MSE divided by the teacher state's mean square (deep
GPT-2 residual streams are large, so raw MSE would drown the rest); ``lam`` > 0 only for Embedding Resending (ER)
students, where ``r`` is the model's ``resend_token`` (resend norm) and ``E(x_{t+1})`` the (detached) token
embedding of the token state t predicts, i.e. of the next decoder input. The last term (``er_self``, MERGE's
negative cosine) penalises a resent state that points at its own position's input token, which the residual stream
carries to the top (positions whose next token is the same token are left out); measured, it removes that
component but does not stop ER rollouts from repeating themselves (docs/results.md). ER training also perturbs the input
embeddings of generated positions (uniform noise of amplitude ``er_noise`` times the embedding table's RMS, then
dropout ``er_dropout``) and can train on unrolled resent states (``er_unroll`` extra passes: scheduled sampling in
embedding space, see :meth:`Distiller.er_inputs`); all of it on the decoder side, the encoder always reads the
source tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mpcgen import approx
from mpcgen.distill.student import embedding_rms, token_embeddings
from mpcgen.errors import MpcgenError
from mpcgen.models import PRESETS
from mpcgen.models import decoder_forward
from mpcgen.tokenization import IGNORE_INDEX
from mpcgen.train.optim import weight_decay_groups


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
    er_self: float = 0.0
    range: float = 0.0  # 2Quad-lite: weight of the penalty on reciprocal arguments past their safe bound

    def __post_init__(self) -> None:
        if self.range < 0:
            raise MpcgenError(f"--range-weight must be >= 0, got {self.range}")
        for name in ("ce", "kl", "hidden", "er_noise", "er_self"):
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
    "lite": dict(ce=0.0, kl=1.0, hidden=1.0, range=1.0),
    # lite's distillation under MERGE's ER alignment and input perturbations (lam 0.5: the KL and hidden terms
    # carry the quality that CE alone did not give merge).
    "lite-er": dict(ce=0.0, kl=1.0, hidden=1.0, range=1.0, er_lambda=0.5, er_noise=0.2, er_dropout=0.6),
    "merge": _ER,
    "merge-er-only": _ER,
    "merge-mm-only": dict(ce=1.0),
}


def lite_arguments(core: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """The argument ``a`` of 2Quad-lite's reciprocal in every row with a visible key, from an ``AttentionCore``'s
    forward inputs (a forward hook's ``args``, ``kwargs``); differentiable."""
    q, k = args[0], args[1]
    mask = args[3] if len(args) > 3 else kwargs.get("mask")
    bias = args[4] if len(args) > 4 else kwargs.get("bias")
    scores = q.matmul(k.transpose(-2, -1)) * core.scale
    if bias is not None:
        scores = scores + bias
    visible = torch.ones_like(scores) if mask is None else mask.to(scores.dtype).expand_as(scores)
    count = visible.sum(-1)
    total = ((scores + approx.TWO_QUAD_C).square() * visible).sum(-1) + approx.TWO_QUAD_EPS
    a = total / (count.clamp(min=approx.TWO_QUAD_LITE_MIN_KEYS) * approx.TWO_QUAD_C ** 2)
    return a[count > 0]


@contextlib.contextmanager
def _recording_lite_arguments(model: nn.Module, into: list[tuple[torch.Tensor, float, float]], *, enabled: bool
                              ) -> Iterator[None]:
    """While the block runs, append each 2Quad-lite attention's reciprocal arguments with that attention's safe bound
    (:func:`mpcgen.approx.two_quad_lite_safe`) and its range's top to ``into``."""
    from mpcgen.models.layers import AttentionCore

    def record(core: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        top = approx.TWO_QUAD_LITE_RANGES[core.options["reciprocal_range"]][1]
        into.append((lite_arguments(core, args, kwargs), approx.two_quad_lite_safe(**core.options), top))

    handles = [m.register_forward_hook(record, with_kwargs=True)
               for m in model.modules() if enabled and isinstance(m, AttentionCore) and m.kind == "2quad-lite"]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def loss_weights(preset: str, **overrides: Any) -> LossWeights:
    """The preset's weights with every non-None override applied; ER knobs refused for non-ER presets."""
    base = dict(PRESET_LOSSES[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    weights = LossWeights(**base)
    if not PRESETS[preset]["embedding_resend"]:
        used = [k for k in ("er_lambda", "er_noise", "er_dropout", "er_rollout_prob", "er_unroll", "er_self")
                if getattr(weights, k)]
        if used:
            raise MpcgenError(f"preset {preset!r} has no Embedding Resending; {used} only apply to ER presets "
                              f"{sorted(p for p in PRESETS if PRESETS[p]['embedding_resend'])}")
    return weights


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
    """The :class:`Layout` of a :class:`mpcgen.train.Collator` batch for a model with ``config`` (a student's,
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


# ------------------------------------------------------------------------------------------------------ the loss


def param_groups(model: nn.Module, weight_decay: float, *, reciprocal_lr_scale: float) -> list[dict]:
    """AdamW groups by stage 1's weight-decay rule (:mod:`mpcgen.train.optim`); THE-X's reciprocal estimator apart.

    Its weights span 1e-6 .. 1e3 (the 1/x interpolant's slope changes and knots), so Adam's per-weight steps of
    size ~lr wreck it at ordinary learning rates: it trains at ``lr * reciprocal_lr_scale``, or not at all for 0.
    """
    params, recip = [], []
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1].startswith("recip_"):
            p.requires_grad_(reciprocal_lr_scale > 0)
            if reciprocal_lr_scale > 0:
                recip.append(p)
        elif p.requires_grad:
            params.append(p)
    out = weight_decay_groups(params, weight_decay)
    if recip:
        out.append({"params": recip, "weight_decay": 0.0, "lr_scale": reciprocal_lr_scale})
    return out


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
        arguments: list[tuple[torch.Tensor, float, float]] = []
        with _recording_lite_arguments(model, arguments, enabled=w.range > 0):
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
        if arguments:
            # A quadratic wall past the safe bound keeps training away from where the Newton steps diverge (which
            # private inference would compute too): without it 40-70 steps reached NaN. Summed over rows (per
            # example), not averaged: the rows that grow are a few per sequence (the first keys), and a mean over
            # every row let them pass the limit.
            walls = [F.relu(a - safe).square().sum() / lay.ids.size(0) for a, safe, _ in arguments]
            parts["range"] = torch.stack(walls).sum()
            base = base + w.range * parts["range"]
            # Rows past the range's top: training guards them (approx.two_quad_lite), inference does not, so this
            # share is what the penalty must drive to 0 (logged, not a loss).
            with torch.no_grad():
                over = sum(int((a.detach() > top).sum()) for a, _, top in arguments)
                parts["lite_over"] = torch.tensor(over / max(1, sum(a.numel() for a, _, _ in arguments)))
        total = base
        if self.er:
            resent = model.resend_token(out.hidden[:, :n_pred]).float()
            wanted = token_embeddings(model, target.clamp(min=0)).detach().float()  # E(next input)
            cos = F.cosine_similarity(resent, wanted, dim=-1)  # (B, N)
            parts["er_cos"] = ((1.0 - cos) * mask).sum() / n
            total = (1.0 - w.er_lambda) * base + w.er_lambda * parts["er_cos"]
            if w.er_self:
                own = lay.ids[:, :n_pred]  # the input id of each predicting position
                own_emb = token_embeddings(model, own).detach().float()
                differ = mask * (own != target).float()
                self_cos = F.relu(F.cosine_similarity(resent, own_emb, dim=-1))
                parts["er_self"] = (self_cos * differ).sum() / differ.sum().clamp(min=1.0)
                total = total + w.er_self * parts["er_self"]
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


__all__ = ["Distiller", "Layout", "LossWeights", "PRESET_LOSSES", "forward_layout", "layout", "loss_weights",
           "param_groups", "weights_dict"]
