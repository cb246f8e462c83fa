"""The few operations that differ between ``torch.Tensor`` and CrypTen's ``MPCTensor``.

Every model forward is written with tensor methods both backends share (``matmul``, ``square``, ``sum``, ``view``,
...). What they do not share lives here, dispatching on the tensor's type: concatenation, one-hot / argmax, applying a
public mask, inverse square root, erf, a softmax with a mask, and products whose left operand may be a plain torch
tensor while the right one is secret (``torch.Tensor.__mul__`` refuses an ``MPCTensor``; the reverse works and costs
no communication). CrypTen is imported lazily, so plaintext users never pay for it.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch

Tensor = Any  # a torch.Tensor or a crypten MPCTensor: the forward code is written for both

# The value masked scores are pushed to before the max of a secret softmax (only the max sees it; see masked_softmax).
# It must exceed any real spread of attention scores, but no more: the max's selections multiply by score
# differences, and fixed-point truncation fails with a probability that grows with the magnitude (|x| / 2^47 at 16
# fractional bits), so 1e4 made rare whole-row errors; 512 is ~10x the spread of trained GPT-2 scores.
_MASK_SHIFT = 512.0


def is_encrypted(x: Any) -> bool:
    """True for a CrypTen tensor (secret shares); False for a torch tensor or a number."""
    if isinstance(x, torch.Tensor) or not hasattr(x, "get_plain_text"):
        return False
    from mpcgen.mpc.compat import crypten

    return crypten.is_encrypted_tensor(x)


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Concatenate along ``dim``; secret if any input is secret (plain inputs are encrypted first)."""
    if not any(is_encrypted(t) for t in tensors):
        return torch.cat(list(tensors), dim=dim)
    from mpcgen.mpc.compat import crypten

    # A public tensor joining secret ones is shared as a constant (no communication: one party holds it).
    parts = [t if is_encrypted(t) else crypten.cryptensor(t, src=0) for t in tensors]
    return crypten.cat(parts, dim=dim)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Stack along a new ``dim`` (see :func:`cat`)."""
    return cat([t.unsqueeze(dim) for t in tensors], dim=dim)


def one_hot(ids: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float one-hot of public integer ids: ``(..., num_classes)``."""
    return torch.nn.functional.one_hot(ids.long(), num_classes).to(dtype)


def argmax_one_hot(x: Tensor, dim: int = -1) -> Tensor:
    """One-hot of the argmax along ``dim`` (secret under MPC: a tree of secure comparisons)."""
    if is_encrypted(x):
        hot = x.argmax(dim=dim, keepdim=True, one_hot=True)
        # CrypTen returns comparison bits at scale 1 (integers); a product with a float table would then encode the
        # table at scale 1 too (rounding it to integers). Re-scale the shares locally to x's fixed point.
        if hot.encoder.scale != x.encoder.scale:
            hot.share = hot.share * int(x.encoder.scale)
            hot.encoder = copy.deepcopy(x.encoder)
        return hot
    idx = x.argmax(dim=dim)
    out = one_hot(idx, x.size(dim), dtype=x.dtype)
    return out.movedim(-1, dim) if dim not in (-1, x.dim() - 1) else out


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` where either side may be secret; a public ``a`` with a secret ``b`` goes through the transpose."""
    if is_encrypted(a) or not is_encrypted(b):
        return a.matmul(b)
    # torch refuses an MPCTensor operand: (a b) = (b^T a^T)^T, and transposes are local.
    return b.transpose(-2, -1).matmul(a.transpose(-2, -1)).transpose(-2, -1)


def mul(a: Tensor, b: Tensor) -> Tensor:
    """``a * b`` where either side may be secret (the secret one goes first)."""
    return b * a if (is_encrypted(b) and not is_encrypted(a)) else a * b


def add(a: Tensor, b: Tensor) -> Tensor:
    """``a + b`` where either side may be secret (the secret one goes first)."""
    return b + a if (is_encrypted(b) and not is_encrypted(a)) else a + b


def inv_sqrt(x: Tensor) -> Tensor:
    """``1 / sqrt(x)``: ``torch.rsqrt`` in plaintext, CrypTen's Newton iteration under MPC."""
    return x.inv_sqrt() if is_encrypted(x) else torch.rsqrt(x)


def erf(x: Tensor) -> Tensor:
    """The error function: exact in plaintext; under MPC ``tanh(2/sqrt(pi) (x + 11/123 x^3))`` (Vedder 1987,
    |error| < 4e-4 everywhere), because CrypTen's own ``erf`` is a Taylor series that diverges beyond |x| ~ 1.5."""
    if not is_encrypted(x):
        return torch.erf(x)
    return ((x + x.square() * x * (11.0 / 123.0)) * (2.0 / math.sqrt(math.pi))).tanh()


def masked_softmax(scores: Tensor, mask: torch.Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` where ``mask`` (public 0/1, broadcastable) is 0; masked entries get probability 0.

    Plaintext: ``masked_fill(mask == 0, finfo.min)`` then ``softmax`` (bit-compatible with Hugging Face).
    Secret: ``e = exp((s - max) * mask) * mask``, ``p = e / sum(e)``. CrypTen's ``exp`` is ``(1 + x/2^8)^(2^8)``,
    which goes wrong for inputs below -256, so no large negative constant ever reaches it: the mask is applied after
    the non-linearity. The max (for stability) is taken over unmasked entries only, by shifting masked ones down.
    """
    if not is_encrypted(scores):
        if mask is not None:
            scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=dim)
    if mask is None:
        shifted = scores
    else:
        shifted = scores + (mask.to(torch.float32) - 1.0) * _MASK_SHIFT
    peak, _ = shifted.max(dim=dim, keepdim=True)
    centred = scores - peak
    if mask is not None:
        centred = centred * mask
    e = centred.exp()
    if mask is not None:
        e = e * mask
    return normalise(e, mask, dim=dim)


def normalise(e: Tensor, mask: torch.Tensor | None, dim: int = -1, eps: float = 0.0, scale: float = 1.0,
              reciprocal: Any = None, min_count: int = 1) -> Tensor:
    """``e / (sum(e) + eps)`` along ``dim``, computed as ``(e / (n s)) * reciprocal((sum(e) + eps) / (n s))``.

    ``n`` is the public number of unmasked entries per row (at least ``min_count``) and ``s`` a public typical size
    of ``e``. Mathematically a no-op, but it keeps the argument of the reciprocal near 1 instead of growing with the
    sequence length: CrypTen's Newton iteration (the default) is accurate there (0.1% on [0.05, 10], 3% at 50,
    divergent above ~650), and a cheaper ``reciprocal`` (e.g. :func:`range_reciprocal`) can be used on a known range.
    """
    size = e.size(dim)
    if mask is None:
        inv_n: Any = 1.0 / (max(size, min_count) * scale)
    else:
        dtype = e.dtype if isinstance(e, torch.Tensor) else torch.float32  # a public scale for a secret e
        inv_n = (mask.to(dtype).sum(dim=dim, keepdim=True).clamp(min=float(min_count)) * scale).reciprocal()
    total = e.sum(dim=dim, keepdim=True)
    if eps:
        total = total + eps
    argument = total * inv_n
    return (e * inv_n) * (argument.reciprocal() if reciprocal is None else reciprocal(argument))


def range_reciprocal(a: Tensor, lo: float, hi: float, steps: int) -> Tensor:
    """``1 / a`` for ``a`` in ``[lo, hi]``: ``steps`` Newton steps ``y <- y (2 - a y)`` from a public linear start.

    The start ``y0 = beta (lo + hi - a)`` with ``beta = 3.8 / (lo + hi)^2`` costs no communication and keeps ``a y0``
    in ``[3.8 lo hi / (lo + hi)^2, 0.95 * 2)`` on the range, so each step (2 secret products) squares the relative
    error ``1 - a y``: ``|1 - a y_k| <= (1 - 3.8 lo hi / (lo + hi)^2)^(2^k)``. It converges for every
    ``0 < a < lo + hi`` and diverges beyond: the caller must keep its argument there (2Quad-lite's public row scale).
    The same formula runs in plaintext, so training sees exactly what private inference computes.
    """
    beta = 3.8 / (lo + hi) ** 2
    y = a * -beta + beta * (lo + hi)
    for _ in range(steps):
        y = y * (a * y * -1.0 + 2.0)
    return y


def apply_mask(x: Tensor, mask: torch.Tensor | None) -> Tensor:
    """Zero the entries where the public 0/1 ``mask`` is 0 (a local product under MPC)."""
    return x if mask is None else x * mask.to(torch.float32)


def sqrt_scale(dim: int) -> float:
    """``1 / sqrt(dim)``, the usual attention-score scale (a public constant)."""
    return 1.0 / math.sqrt(dim)
