"""Building blocks shared by every student: leaf op modules (which own all parameters) and the modules that wire them.

Leaf op modules carry ``cost_group`` (one of :data:`COST_GROUPS`); the MPC runtime walks ``named_modules()``,
swaps each leaf's parameters for secret shares (private weights) or leaves them plaintext (public weights), and
hooks each leaf by its cost group. So forwards here never read ``.data``, never call ``torch.*`` on a parameter and
use tensor methods only; the few ops that differ between torch and CrypTen come from :mod:`mpcgen.ops`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mpcgen import ops
from mpcgen.approx import ACTIVATIONS, ATTENTION_PARAMS, ATTENTIONS, NORM_PARAMS, NORMS
from mpcgen.models.config import ModelConfig

Tensor = Any  # torch.Tensor or MPCTensor
COST_GROUPS = ("embed", "linear", "attention", "activation", "norm", "lm_head")
INIT_STD = 0.02

# -------------------------------------------------------------------------------------------- leaf op modules


class Linear(nn.Module):
    """``y = x W + b`` with ``W`` stored as (in_features, out_features)."""

    cost_group: ClassVar[str] = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, out_features) * INIT_STD)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = x.matmul(self.weight)
        return y if self.bias is None else y + self.bias


class Bias(nn.Module):
    """``y = x + b`` (what is left of an output projection once its weight was merged into the value projection)."""

    cost_group: ClassVar[str] = "linear"

    def __init__(self, features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class Embedding(nn.Module):
    """Token table (num, dim): integer ids -> plain lookup (torch only); one-hot rows -> ``one_hot @ table``."""

    cost_group: ClassVar[str] = "embed"

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num, dim) * INIT_STD)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, torch.Tensor) and not x.is_floating_point():
            return self.weight[x]
        return ops.matmul(x, self.weight)


class PositionEmbedding(nn.Module):
    """Learned positions: rows ``offset + start .. offset + start + length`` of the table (public indices)."""

    cost_group: ClassVar[str] = "embed"

    def __init__(self, num: int, dim: int, offset: int = 0) -> None:
        super().__init__()
        self.offset = offset
        self.weight = nn.Parameter(torch.randn(num + offset, dim) * INIT_STD)

    def forward(self, start: int, length: int) -> Tensor:
        first = self.offset + start
        return self.weight[first:first + length]  # (T, d)


class Norm(nn.Module):
    """The configured norm (:data:`mpcgen.approx.NORMS`); owns the vectors ``NORM_PARAMS[kind]``."""

    cost_group: ClassVar[str] = "norm"

    def __init__(self, kind: str, dim: int, eps: float) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        names = NORM_PARAMS[kind]
        self.weight = nn.Parameter(torch.ones(dim)) if "weight" in names else None
        self.bias = nn.Parameter(torch.zeros(dim)) if "bias" in names else None

    def forward(self, x: Tensor) -> Tensor:
        return NORMS[self.kind](x, self.weight, self.bias, self.eps)


class Activation(nn.Module):
    """The configured activation (:data:`mpcgen.approx.ACTIVATIONS`); no parameters."""

    cost_group: ClassVar[str] = "activation"

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        return ACTIVATIONS[self.kind](x)


class AttentionCore(nn.Module):
    """Scores, normaliser and mixing of one attention; or constant attention.

    Score-based kinds: ``p = normaliser(q k^T * scale + bias, mask)``, ``out = p v`` (thex owns its reciprocal MLP).
    ``constant``: a learned ``M`` of shape (heads, n_q, n_k), ``heads`` = 1 when shared by all heads; training form
    ``A = softmax(M)`` over all columns, then the mask zeroes entries (no renormalising); ``out = A[rows] v``, where
    query rows are ``start .. start + T`` (the K/V cache step t uses row t). :meth:`freeze` replaces ``M`` by
    ``A`` (parameter ``const_weights``), the form the server secret-shares at inference.
    """

    cost_group: ClassVar[str] = "attention"

    def __init__(self, kind: str, *, scale: float, heads: int = 1, n_q: int = 0, n_k: int = 0,
                 frozen: bool = False, lite_range: str = "standard") -> None:
        super().__init__()
        self.kind, self.scale, self.frozen = kind, scale, frozen
        # 2quad-lite's reciprocal range (a public part of the model), passed to its normaliser
        self.options = {"reciprocal_range": lite_range} if kind == "2quad-lite" else {}
        if kind == "constant":
            # Zeros: A starts uniform over all columns (masked ones are then dropped, rows not renormalised).
            name = "const_weights" if frozen else "const_logits"
            init = torch.full((heads, n_q, n_k), 1.0 / n_k) if frozen else torch.zeros(heads, n_q, n_k)
            self.register_parameter(name, nn.Parameter(init))
        learned = ATTENTION_PARAMS[kind]() if kind in ATTENTION_PARAMS else {}
        self.learned_names = tuple(learned)
        for name, value in learned.items():
            self.register_parameter(name, nn.Parameter(value))

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant"

    def forward(self, q: Tensor | None, k: Tensor | None, v: Tensor, mask: torch.Tensor | None,
                bias: Tensor | None = None, start: int = 0, q_len: int = 1) -> Tensor:
        """q (B, nh, T, hs), k and v (B, nh, S, hs) -> (B, nh, T, hs); q, k unused (None) when constant."""
        if self.is_constant:
            return ops.matmul(self.constant_weights(start, q_len, v.size(-2), mask), v)  # (B, h, T, hs)
        scores = q.matmul(k.transpose(-2, -1))  # (B, nh, T, S)
        if self.scale != 1.0:
            scores = scores * self.scale
        if bias is not None:
            scores = scores + bias
        params = {name: getattr(self, name) for name in self.learned_names} if self.learned_names else None
        options = self.options
        if self.kind == "2quad-lite" and self.training and isinstance(scores, torch.Tensor):
            options = {**options, "guard": True}  # plaintext training only (see approx.two_quad_lite)
        p = ATTENTIONS[self.kind](scores, mask, params, **options)
        return p.matmul(v)  # (B, nh, T, hs)

    def constant_weights(self, start: int, length: int, n_keys: int, mask: torch.Tensor | None) -> Tensor:
        """Masked constant attention rows for query positions ``start ..`` over keys ``0 .. n_keys``: (1|B, h, T, S)."""
        if self.frozen:
            a = self.const_weights[:, start:start + length, :n_keys].unsqueeze(0)  # (1, h, T, S)
            return ops.apply_mask(a, mask)
        # softmax over ALL columns of M (before masking), then slice: the masked entries are not renormalised.
        m = self.const_logits[:, start:start + length, :].unsqueeze(0)  # (1, h, T, n_k)
        a = ATTENTIONS["constant"](m, None)[..., :n_keys]  # (1, h, T, S)
        return ops.apply_mask(a, mask)

    def freeze(self) -> None:
        """Replace ``M`` by ``A = softmax(M)`` (full rows), the inference form; idempotent. Plaintext only."""
        if not self.is_constant or self.frozen:
            return
        with torch.no_grad():
            a = self.const_logits.softmax(dim=-1)
        del self.const_logits
        self.const_weights = nn.Parameter(a)
        self.frozen = True


class RelativeBias(nn.Module):
    """T5 relative position bias: a table (num_buckets, n_head) indexed by public position buckets -> (1, nh, T, S)."""

    cost_group: ClassVar[str] = "attention"

    def __init__(self, num_buckets: int, max_distance: int, n_head: int, bidirectional: bool) -> None:
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.randn(num_buckets, n_head) * INIT_STD)

    def forward(self, start: int, q_len: int, k_len: int) -> Tensor:
        context = torch.arange(start, start + q_len)[:, None]
        memory = torch.arange(k_len)[None, :]
        buckets = relative_position_bucket(memory - context, self.bidirectional, self.num_buckets,
                                           self.max_distance)  # (T, S)
        one_hot = ops.one_hot(buckets.reshape(-1), self.num_buckets)  # (T*S, nb), public
        values = ops.matmul(one_hot, self.weight)  # (T*S, nh)
        return values.transpose(0, 1).reshape(1, -1, q_len, k_len)  # (1, nh, T, S)


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucketing of ``memory - query`` offsets (Mesh TensorFlow); public integers."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -relative.clamp(max=0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    large = max_exact + (torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


class LMHead(nn.Module):
    """Logits ``h W (+ b)``; ``W`` is the transposed token table when tied, else its own (n_embd, vocab)."""

    cost_group: ClassVar[str] = "lm_head"

    def __init__(self, dim: int, vocab: int, tied_to: Embedding | None, bias: bool, input_scale: float) -> None:
        super().__init__()
        # A plain list, not a registered child: the table belongs to (and is encrypted once, on) the Embedding.
        self._tied = [tied_to] if tied_to is not None else []
        self.weight = None if tied_to is not None else nn.Parameter(torch.randn(dim, vocab) * INIT_STD)
        self.bias = nn.Parameter(torch.zeros(vocab)) if bias else None
        self.input_scale = input_scale

    def forward(self, h: Tensor) -> Tensor:
        if self.input_scale != 1.0:
            h = h * self.input_scale
        w = self._tied[0].weight.transpose(0, 1) if self._tied else self.weight  # (d, vocab)
        logits = h.matmul(w)
        return logits if self.bias is None else logits + self.bias


# ------------------------------------------------------------------------------------------------ wiring modules


@dataclass
class KVCache:
    """Per-layer keys and values of past positions (torch or secret), and the cross-attention ones (computed once).

    ``self_kv[i]`` is ``(k, v)`` with k ``None`` in constant layers; entries grow along dim 2 via ``ops.cat``.
    """

    n_layer: int
    length: int = 0
    self_kv: list[tuple[Tensor | None, Tensor] | None] = field(default_factory=list)
    cross_kv: list[tuple[Tensor | None, Tensor] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.self_kv = self.self_kv or [None] * self.n_layer
        self.cross_kv = self.cross_kv or [None] * self.n_layer


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention: projections (leaf ``Linear`` s) around one ``AttentionCore``.

    Constant layers have no Q/K projections. With ``shared`` constant attention the value path keeps its full width
    as one "head" (the same A mixes every head, so mixing the concatenation is the same); ``merged`` keeps only the
    folded value projection ``W_V W_O`` (bias ``b_V W_O``, pushed through A exactly: masked rows of A do not sum to
    1) and the output bias ``b_O``.
    """

    def __init__(self, config: ModelConfig, kind: str, *, cross: bool, n_q: int, n_k: int) -> None:
        super().__init__()
        d, nh, hs = config.n_embd, config.n_head, config.head_dim
        inner = nh * hs
        self.n_head, self.head_dim, self.cross = nh, hs, cross
        self.constant = kind == "constant"
        self.shared = self.constant and config.merge_linear
        self.merged = self.shared and config.merged
        bias = config.bias or config.merged  # folding a norm's beta creates biases
        scale = 1.0 / math.sqrt(hs) if config.scale_attention else 1.0
        if not self.constant:
            self.q = Linear(d, inner, bias)
            self.k = Linear(d, inner, bias)
        if self.merged:
            self.v = Linear(d, d, True)
            self.o_bias = Bias(d)
        else:
            self.v = Linear(d, inner, bias)
            self.o = Linear(inner, d, config.bias)
        self.core = AttentionCore(kind, scale=scale, heads=1 if self.shared else nh, n_q=n_q, n_k=n_k,
                                  frozen=config.constant_frozen, lite_range=config.lite_range)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.size()
        if self.shared:
            return x.unsqueeze(1)  # (B, 1, T, C): one head of full width
        return x.reshape(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x: Tensor, mask: torch.Tensor | None, *, source: Tensor | None = None,
                bias: Tensor | None = None, cache: tuple[Tensor | None, Tensor] | None = None, start: int = 0
                ) -> tuple[Tensor, tuple[Tensor | None, Tensor]]:
        """``x`` (B, T, d) -> (B, T, d) and this layer's (k, v) for the cache.

        Self-attention appends to ``cache``; cross-attention (``source``: encoder states) reuses a filled ``cache``.
        """
        b, t, _ = x.size()
        q = None if self.constant else self._heads(self.q(x))  # (B, nh, T, hs)
        if self.cross and cache is not None:
            k, v = cache
        else:
            kv_in = source if self.cross else x
            k = None if self.constant else self._heads(self.k(kv_in))  # (B, nh, S, hs)
            v = self._heads(self.v(kv_in))  # (B, nh|1, S, hs|C)
            if cache is not None:  # self-attention: append this step to the past
                k = None if k is None else ops.cat([cache[0], k], dim=2)
                v = ops.cat([cache[1], v], dim=2)
        # Constant cross-attention: row = target position, columns = source positions.
        y = self.core(q, k, v, mask, bias=bias, start=start, q_len=t)  # (B, nh|1, T, hs|C)
        y = y.transpose(1, 2).reshape(b, t, -1)  # (B, T, inner)
        y = self.o_bias(y) if self.merged else self.o(y)
        return y, (k, v)


class MLP(nn.Module):
    """Feed-forward: ``fc2(act(fc1 x))``, or gated (T5 v1.1): ``fc2(act(fc1 x) * (gate x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, ff = config.n_embd, config.ff_dim
        bias = config.bias or config.merged
        self.fc1 = Linear(d, ff, bias)
        self.gate = Linear(d, ff, bias) if config.gated_ff else None
        self.act = Activation(config.activation_fn_name)
        self.fc2 = Linear(ff, d, config.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.fc1(x))
        if self.gate is not None:
            h = h * self.gate(x)
        return self.fc2(h)


class Block(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, MLP; pre- or post-norm residuals."""

    def __init__(self, config: ModelConfig, kind: str, *, cross: bool) -> None:
        super().__init__()
        n, eps = config.n_positions, config.norm_eps
        # Pre-norm folds (merged models) absorb the norms in front of linears; post-norm ones stay.
        norm = "none" if (config.merged and config.pre_norm) else config.norm
        self.pre_norm = config.pre_norm
        self.norm1 = Norm(norm, config.n_embd, eps)
        self.attn = MultiHeadAttention(config, kind, cross=False, n_q=n, n_k=n)
        self.norm_cross = Norm(norm, config.n_embd, eps) if cross else None
        self.cross_attn = MultiHeadAttention(config, kind, cross=True, n_q=n, n_k=n) if cross else None
        self.norm2 = Norm(norm, config.n_embd, eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, mask: torch.Tensor | None, *, bias: Tensor | None = None,
                source: Tensor | None = None, source_mask: torch.Tensor | None = None,
                cache: tuple | None = None, cross_cache: tuple | None = None, start: int = 0
                ) -> tuple[Tensor, tuple, tuple | None]:
        cross_kv = None
        if self.pre_norm:
            a, kv = self.attn(self.norm1(x), mask, bias=bias, cache=cache, start=start)
            x = x + a
            if self.cross_attn is not None:
                a, cross_kv = self.cross_attn(self.norm_cross(x), source_mask, source=source, cache=cross_cache,
                                              start=start)
                x = x + a
            x = x + self.mlp(self.norm2(x))
        else:
            a, kv = self.attn(x, mask, bias=bias, cache=cache, start=start)
            x = self.norm1(x + a)
            if self.cross_attn is not None:
                a, cross_kv = self.cross_attn(x, source_mask, source=source, cache=cross_cache, start=start)
                x = self.norm_cross(x + a)
            x = self.norm2(x + self.mlp(x))
        return x, kv, cross_kv
