"""Teacher statistics for initialising what a student replaces: mean attention maps and norm input statistics.

:func:`teacher_statistics` runs the Hugging Face teacher on real training batches; :func:`init_constant_attention`
starts constant attention (decoder self-, encoder self- and cross-attention) from its mean attention maps and
:func:`init_affine_norms` calibrates affine norms to the norms they replace (LayerNorm; T5's RMSNorm), and
:func:`calibrate_lite_attention` keeps 2Quad-lite's reciprocal inside its range on real batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mpcgen import approx
from mpcgen.distill.objective import Layout, layout, lite_arguments
from mpcgen.errors import MpcgenError
from mpcgen.models import hf as hf_import

# Entries of M for keys a query never sees: exp(-20) ~ 2e-9, so softmax over ALL columns (DESIGN section 4) leaves
# the visible entries' mass ~1 even with 1024 positions.
MASKED_LOGIT = -20.0
MIN_MEAN_ATTENTION = 1e-6


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
    config_fn, map_fn = hf_import.importer(family)
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






def calibrate_lite_attention(student: nn.Module, batches: list[dict[str, torch.Tensor]], *,
                             target: float | None = None) -> dict[str, float]:
    """Keep 2Quad-lite's reciprocal inside its range on real batches: attention by attention, in the order the
    data reaches them, scale the query projection by the largest factor in (0, 1] that brings the largest argument
    ``a`` seen down to ``target`` (default 2/3 of the safe bound :func:`~mpcgen.approx.two_quad_lite_safe`, a third
    of the limit ``lo + hi`` past which the Newton steps diverge; training then keeps ``a`` below the safe bound
    with a penalty).

    A teacher's scores can be large (a GPT-2 trained here reaches 54 in layer 1, where 2Quad-lite's ``a`` would pass
    the limit on short rows); scaling ``q`` only softens the attention, which distillation then sharpens from a
    point where the student's forward is finite. Each attention's inputs are recorded in one forward pass and the
    factor found by bisection on them (``q`` scales linearly with it). Returns, per attention, its factor.
    """
    from mpcgen.distill.objective import forward_layout
    from mpcgen.distill.student import token_embeddings
    from mpcgen.models.layers import MultiHeadAttention

    lites = [(name, m) for name, m in student.named_modules()
             if isinstance(m, MultiHeadAttention) and m.core.kind == "2quad-lite"]
    lays = [layout(student.config, b) for b in batches]
    factors: dict[str, float] = {}
    for name, attention in lites:
        calls: list[tuple[Any, tuple, dict]] = []
        handle = attention.core.register_forward_hook(
            lambda core, args, kwargs, out: calls.append((core, args, kwargs)), with_kwargs=True)
        try:
            with torch.no_grad():
                for lay in lays:
                    forward_layout(student, lay, token_embeddings(student, lay.ids))
        finally:
            handle.remove()

        goal = target if target is not None else approx.two_quad_lite_safe(**attention.core.options) * 2 / 3

        def peak(t: float) -> float:
            found = [lite_arguments(core, (args[0] * t, *args[1:]), kwargs) for core, args, kwargs in calls]
            return max((float(a.max()) for a in found if a.numel()), default=0.0)

        factor = 1.0
        if peak(1.0) > goal:
            if peak(0.0) > goal:
                raise MpcgenError(f"{name}: 2quad-lite's argument exceeds {goal} even with q = 0 (the position "
                                  f"bias alone is too large for its reciprocal's range)")
            lo, hi = 0.0, 1.0
            for _ in range(30):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if peak(mid) <= goal else (lo, mid)
            factor = lo
            with torch.no_grad():
                attention.q.weight.mul_(factor)
                if attention.q.bias is not None:
                    attention.q.bias.mul_(factor)
        factors[name] = factor
    return factors


__all__ = ["MASKED_LOGIT", "MIN_MEAN_ATTENTION", "MeanAttention", "TeacherStats", "calibrate_lite_attention",
           "constant_logits_from_mean", "init_affine_norms", "init_constant_attention", "norm_pairs",
           "teacher_name_map", "teacher_statistics"]
