"""Registries of the non-linearities a student may use: activations, attention normalisers, norms.

Each entry is a short function whose docstring gives its exact formula (DESIGN.md section 4). The functions are
written with tensor methods both backends share, so the same entry runs on torch tensors (training) and on CrypTen
``MPCTensor`` s (private inference); the few differing ops come from :mod:`mpcgen.ops`. Learned parameters are not
held here: the module that owns them (``AttentionCore``, ``Norm``) registers what ``*_PARAMS`` describe and passes
them in, so the MPC runtime sees every weight on a leaf module.

Look names up with :func:`lookup`, which raises :class:`MpcgenError` listing ``sorted(REGISTRY)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, TypeVar

import torch

from mpcgen import ops
from mpcgen.errors import MpcgenError

Tensor = Any  # torch.Tensor or MPCTensor
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------- activations


def gelu(x: Tensor) -> Tensor:
    """GeLU, erf form (BART): ``0.5 x (1 + erf(x / sqrt(2)))``."""
    return x * (ops.erf(x * (1.0 / math.sqrt(2.0))) + 1.0) * 0.5


def gelu_new(x: Tensor) -> Tensor:
    """GeLU, tanh form (GPT-2, T5 gated-gelu): ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    inner = (x + x * x.square() * 0.044715) * math.sqrt(2.0 / math.pi)
    return x * (inner.tanh() + 1.0) * 0.5


def relu(x: Tensor) -> Tensor:
    """ReLU: ``max(x, 0)`` (a secure comparison under MPC)."""
    return x.relu()


def quad(x: Tensor) -> Tensor:
    """Quad GeLU (MPCformer): ``0.125 x^2 + 0.25 x + 0.5``; one secret square per element."""
    return x.square() * 0.125 + x * 0.25 + 0.5


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": gelu,
    "gelu_new": gelu_new,
    "relu": relu,
    "quad": quad,
}
GELU_VARIANTS: dict[str, str] = {"erf": "gelu", "tanh": "gelu_new"}

# ------------------------------------------------------------------------------------------ attention normalisers
# Each maps scores (B, nh, T, S) and a public 0/1 mask broadcastable to them (None: nothing masked) to weights.
# ``params`` carries a learned normaliser's tensors (thex); the others ignore it.

TWO_QUAD_C = 5.0  # MPCformer's shift c in (x + c)^2
# A row whose only visible score is exactly -c (bfloat16 training rounds to it) would be 0 / 0: a floor on the
# denominator, negligible next to a real row's sum (~c^2 per visible key).
TWO_QUAD_EPS = 1e-3
# Well above the fixed-point resolution (2^-16): a row whose scores are all <= 0 then gives p = 0 under MPC too,
# instead of truncation noise times the Newton reciprocal of ~0.
TWO_RELU_EPS = 1e-2


def softmax(scores: Tensor, mask: torch.Tensor | None, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """Softmax: ``p_i = exp(x_i) / sum_j exp(x_j)`` over unmasked j; masked p_i = 0."""
    return ops.masked_softmax(scores, mask, dim=-1)


def two_quad(scores: Tensor, mask: torch.Tensor | None, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """2Quad (MPCformer): ``p_i = (x_i + c)^2 / (sum_j (x_j + c)^2 + eps)``, ``c = 5``, ``eps = 1e-3``; masked
    positions contribute 0."""
    e = ops.apply_mask((scores + TWO_QUAD_C).square(), mask)
    return ops.normalise(e, mask, eps=TWO_QUAD_EPS, scale=TWO_QUAD_C ** 2)  # (x + c)^2 is ~c^2 for small scores


# 2Quad-lite: the argument of its reciprocal is a = sum_j (x_j + c)^2 / (max(n, N0) c^2), 1 for a row of zero scores.
# Its reciprocal is range_reciprocal on a public range [lo, hi] (6 steps: 12 rounds, against ~28 for CrypTen's
# exp-started 10-step Newton), convergent for a < lo + hi, which is what training sees too (the same formula runs in
# plaintext), so the error is part of the learned function. Two ranges at the same cost and the same worst relative
# error (<= 2.3%): "standard" [0.25, 16] and "high" [0.5, 32]. a grows with the sharpness of a row (with the other
# keys near 0, a ~ 1 / (1 - p_max)), and distillation keeps a below half the range's top with a penalty, so
# "standard" holds rows up to p_max ~ 0.88 and "high" up to ~0.94 (copying a name needs sharp rows); "high" pays
# for it on rows with 1-3 visible keys, whose a is below its range (their weights sum short of 1: up to 15% at
# a = 0.25, against 2.3% for "standard"). The ranges are wide because a drifts upwards in distillation (a GPT-2
# student's layer-2 maximum went from 4.0 to 5.7 in 46 steps, and [0.25, 8] diverged within 50-70 steps). Rows
# shorter than N0 keys are scaled as N0 keys, so one large score on a short row does not push a past the range.
TWO_QUAD_LITE_RANGES: dict[str, tuple[float, float, int]] = {"standard": (0.25, 16.0, 6), "high": (0.5, 32.0, 6)}
TWO_QUAD_LITE_MIN_KEYS = 8


def two_quad_lite_safe(reciprocal_range: str = "standard") -> float:
    """The bound distillation keeps 2Quad-lite's argument below (a penalty past it; the start calibrated to 2/3 of
    it): half the range's top, a margin below ``lo + hi`` where the Newton steps start to diverge."""
    return TWO_QUAD_LITE_RANGES[reciprocal_range][1] / 2


def two_quad_lite(scores: Tensor, mask: torch.Tensor | None, params: Mapping[str, Tensor] | None = None, *,
                  reciprocal_range: str = "standard", guard: bool = False) -> Tensor:
    """2Quad with a cheap reciprocal: ``p_i = (x_i + c)^2 * R(a) / (max(n, 8) c^2)``, where ``a = (sum_j (x_j + c)^2
    + eps) / (max(n, 8) c^2)`` and ``R`` is :func:`mpcgen.ops.range_reciprocal` on the named range of
    :data:`TWO_QUAD_LITE_RANGES` (``R(a) = 1 / a`` within 2.3% there); ``c = 5``, ``eps = 1e-3``; masked positions
    contribute 0.

    ``guard`` (training only, plaintext; :class:`~mpcgen.models.layers.AttentionCore` sets it in training mode, as
    dropout is): rows with ``a`` above the range's top get the exact ``1 / a`` instead of the Newton steps, which
    diverge past ``lo + hi`` and turn one transient excursion into NaN for the whole run. Inference (plaintext
    evaluation and MPC alike) never guards: an out-of-range row there costs quality, which evaluation then shows,
    and distillation's range penalty is what keeps rows in range.
    """
    e = ops.apply_mask((scores + TWO_QUAD_C).square(), mask)
    lo, hi, steps = TWO_QUAD_LITE_RANGES[reciprocal_range]

    def reciprocal(a: Tensor) -> Tensor:
        if guard:
            inside = ops.range_reciprocal(a.clamp(max=hi), lo, hi, steps)  # clamped: no inf in the unused branch
            return torch.where(a <= hi, inside, a.reciprocal())
        return ops.range_reciprocal(a, lo, hi, steps)

    return ops.normalise(e, mask, eps=TWO_QUAD_EPS, scale=TWO_QUAD_C ** 2, reciprocal=reciprocal,
                         min_count=TWO_QUAD_LITE_MIN_KEYS)


def two_relu(scores: Tensor, mask: torch.Tensor | None, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """2ReLU: ``p_i = relu(x_i) / (sum_j relu(x_j) + eps)``, ``eps = 1e-2``; masked positions contribute 0."""
    e = ops.apply_mask(scores.relu(), mask)
    return ops.normalise(e, mask, eps=TWO_RELU_EPS)


def thex(scores: Tensor, mask: torch.Tensor | None, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """THE-X as MERGE reproduced it: ``e_i = relu(x_i / 2 + 1)^3``, ``p_i = e_i * r(sum_j e_j)``.

    ``r`` is the learned reciprocal estimator :func:`reciprocal_mlp` (1 -> 16 -> 16 -> 1, ReLU), whose tensors come
    in ``params``. Masked positions contribute 0 to the sum and get p = 0. Variant: ReLU is evaluated under MPC
    (a secure comparison), not by the client in a round trip as in THE-X's HE setting.
    """
    if params is None:
        raise MpcgenError("attention 'thex' needs its reciprocal estimator's parameters")
    base = (scores * 0.5 + 1.0).relu()
    e = ops.apply_mask(base.square() * base, mask)
    return e * reciprocal_mlp(e.sum(dim=-1, keepdim=True), params)


def constant(logits: Tensor, mask: torch.Tensor | None, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """Constant attention (MERGE): ``A = softmax(M)`` over ALL columns, then masked entries set to 0, no renormalising.

    ``logits`` is the learned ``M`` (rows: query positions, columns: key positions), not data-dependent scores.
    """
    return ops.apply_mask(ops.masked_softmax(logits, None, dim=-1), mask)


ATTENTIONS: dict[str, Callable[..., Tensor]] = {
    "softmax": softmax,
    "2quad": two_quad,
    "2quad-lite": two_quad_lite,
    "2relu": two_relu,
    "thex": thex,
    "constant": constant,
}

RECIPROCAL_HIDDEN = 16
RECIPROCAL_RANGE = (1.0, 1024.0)


def reciprocal_mlp(x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """Learned reciprocal ``r(x) = relu(relu(x W1 + b1) W2 + b2) W3 + b3`` (1 -> 16 -> 16 -> 1); x is (..., 1)."""
    h = (x.matmul(params["recip_w1"]) + params["recip_b1"]).relu()
    h = (h.matmul(params["recip_w2"]) + params["recip_b2"]).relu()
    return h.matmul(params["recip_w3"]) + params["recip_b3"]


def reciprocal_mlp_init() -> dict[str, torch.Tensor]:
    """Initial weights of :func:`reciprocal_mlp`: the piecewise-linear interpolant of ``1/x``.

    Unit i of the first layer is ``relu(x - k_i)`` for 16 geometric knots ``k_i`` on [1, 1024]; the second layer is
    the identity (its inputs are already >= 0); the output sums the slope changes, so r is the chord interpolant of
    1/x between knots (relative error <= 6.5%), 1 below the first knot and flat (1/1024) above the last.
    Distillation trains it from there.
    """
    lo, hi = RECIPROCAL_RANGE
    n = RECIPROCAL_HIDDEN
    knots = torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64)
    values = knots.reciprocal()
    slopes = (values[1:] - values[:-1]) / (knots[1:] - knots[:-1])  # (n-1,)
    coeff = torch.zeros(n, dtype=torch.float64)
    coeff[0] = slopes[0]
    coeff[1:-1] = slopes[1:] - slopes[:-1]
    coeff[-1] = -slopes[-1]  # flat beyond the last knot: a reciprocal never goes negative
    out = {
        "recip_w1": torch.ones(1, n),
        "recip_b1": -knots,
        "recip_w2": torch.eye(n),
        "recip_b2": torch.zeros(n),
        "recip_w3": coeff.view(n, 1),  # (16, 1)
        "recip_b3": values[:1],
    }
    return {k: v.to(torch.float32) for k, v in out.items()}


# Learned normalisers: name -> initial parameters (registered on the owning AttentionCore).
ATTENTION_PARAMS: dict[str, Callable[[], dict[str, torch.Tensor]]] = {"thex": reciprocal_mlp_init}

# ----------------------------------------------------------------------------------------------------------- norms
# Each maps x (..., d), weight (d,) or None, bias (d,) or None, eps to the normalised x.


def layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm: ``(x - mean(x)) / sqrt(var(x) + eps) * gamma + beta`` (biased variance)."""
    centred = x - x.mean(dim=-1, keepdim=True)
    var = centred.square().mean(dim=-1, keepdim=True)
    return centred * ops.inv_sqrt(var + eps) * weight + bias


def rmsnorm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    """RMSNorm (T5): ``x / sqrt(mean(x^2) + eps) * gamma`` (no centring, no bias)."""
    return x * ops.inv_sqrt(x.square().mean(dim=-1, keepdim=True) + eps) * weight


def centered(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Centred affine norm: ``(x - mean(x)) * gamma + beta``; the mean is linear, so free under MPC."""
    return (x - x.mean(dim=-1, keepdim=True)) * weight + bias


def affine(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Affine ("simplified") LayerNorm (MERGE): ``x * gamma + beta`` with VECTOR gamma, beta."""
    return x * weight + bias


def no_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """No norm: ``x``."""
    return x


NORMS: dict[str, Callable[..., Tensor]] = {
    "layernorm": layernorm,
    "rmsnorm": rmsnorm,
    "centered": centered,
    "affine": affine,
    "none": no_norm,
}
# Which learned vectors each norm owns.
NORM_PARAMS: dict[str, tuple[str, ...]] = {
    "layernorm": ("weight", "bias"),
    "rmsnorm": ("weight",),
    "centered": ("weight", "bias"),
    "affine": ("weight", "bias"),
    "none": (),
}


def lookup(registry: Mapping[str, T], name: str, field: str) -> T:
    """``registry[name]``, or an :class:`MpcgenError` naming ``field``, the value and ``sorted(registry)``."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise MpcgenError(f"{field}={name!r} is not supported; choose one of {sorted(registry)}") from None
