"""Per-sample gradient clipping without per-sample gradients: ghost clipping in one backward pass.

DP-SGD needs, per example b, its gradient g_b clipped to norm C, summed over the batch: ``sum_b min(1, C/|g_b|) g_b``.
Opacus' hooks mode instantiates every g_b (for GPT-2 small at batch 64: 64 x 4.2M floats, the tied 4096 x 256
embedding alone 256 MB twice); its ghost mode avoids that but runs a second backward pass and refuses tied weights.

Here a module's weight gradient for example b is kept in factor form, ``G_b = sum_t l_{b,t} r_{b,t}^T`` (a Linear:
l = output gradient, r = input; a Conv1D: the transpose; an Embedding: l = one-hot token, r = output gradient), so

    |G_b|^2 = sum_{t,s} (l_{b,t} . l_{b,s}) (r_{b,t} . r_{b,s})          (Li et al. 2022, "ghost norm")

costs B T^2 (rows + cols) instead of B T rows cols. A weight used by several modules (GPT-2's tied embedding and
lm_head; T5's shared embedding, used three times) has g_b = sum of its uses, so its norm adds every cross term
``2 <G_u,b, G_v,b>``, from the same Gram matrices (a one-hot l makes ``l . l'`` a token comparison or a gather).
One backward pass (``torch.autograd.grad`` to the module outputs only: autograd skips the weight gradients) gives
the output gradients; the norms give the clipping factors c_b; the clipped sum is ``sum_{b,t} c_b l r^T``, one
matmul per weight as in a plain backward pass (Bu et al. 2023, "book-keeping"). Layers for which materialising
G_b is cheaper (T (rows + cols) > rows cols) are materialised instead, as Opacus' mixed ghost clipping does.

The first backward pass also checks the unclipped sum against autograd's gradient, so a parameter used outside the
forward of a supported module (whose use the hooks would miss, under-estimating norms) fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import torch
from torch import nn

from mpcgen.errors import MpcgenError


@dataclass
class Factor:
    """One use of a 2-D weight: per-sample gradient ``G_b = sum_t left[b,t] (outer) right[b,t]`` in the weight's
    layout (rows, cols); ``left`` is dense (B, T, rows) or token ids (B, T) standing for one-hot rows."""

    left: torch.Tensor
    right: torch.Tensor  # (B, T, cols)

    @property
    def one_hot(self) -> bool:
        return not self.left.is_floating_point()


# A rule: (module, module input, output gradient) -> {parameter: Factor or per-sample gradient (B, *param.shape)}.
Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[nn.Parameter, Union[Factor, torch.Tensor]]]


def _linear(module: nn.Linear, x: torch.Tensor, g: torch.Tensor) -> dict:
    """nn.Linear: y = x W^T + b, W (out, in): G_b = sum_t g_t x_t^T."""
    x, g = _flat_time(x), _flat_time(g)
    out: dict = {module.weight: Factor(g, x)}
    if module.bias is not None:
        out[module.bias] = g.sum(1)
    return out


def _conv1d(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict:
    """transformers' Conv1D (GPT-2): y = x W + b, W (in, out): G_b = sum_t x_t g_t^T."""
    x, g = _flat_time(x), _flat_time(g)
    return {module.weight: Factor(x, g), module.bias: g.sum(1)}


def _embedding(module: nn.Embedding, ids: torch.Tensor, g: torch.Tensor) -> dict:
    """nn.Embedding: row ids[t] of W (V, d) gets g_t; rows at ``padding_idx`` get no gradient (as in autograd)."""
    ids = ids.reshape(ids.shape[0], -1)
    g = _flat_time(g)
    scale = getattr(module, "embed_scale", 1.0)  # BART's scaled embedding multiplies its output
    if scale != 1.0:
        g = g * scale
    if module.padding_idx is not None:
        g = g * (ids != module.padding_idx).unsqueeze(-1).to(g.dtype)
    return {module.weight: Factor(ids, g)}


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor, g: torch.Tensor) -> dict:
    """nn.LayerNorm: per-sample gradients are (B, d) vectors, cheap to materialise."""
    xhat = nn.functional.layer_norm(x, module.normalized_shape, eps=module.eps)
    out: dict = {}
    if module.weight is not None:
        out[module.weight] = _flat_time(g * xhat).sum(1)
    if module.bias is not None:
        out[module.bias] = _flat_time(g).sum(1)
    return out


def _rms_norm(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict:
    """T5LayerNorm (RMS norm, no bias): y = w * x / rms(x)."""
    xhat = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
    return {module.weight: _flat_time(g * xhat).sum(1)}


def _flat_time(t: torch.Tensor) -> torch.Tensor:
    """(B, ..., d) -> (B, T, d): every position between batch and feature is a 'time step'."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


def _rules() -> dict[type, Rule]:
    """The module types with a rule; exact types, as Opacus' registry (a subclass may change the forward)."""
    from transformers.models.bart.modeling_bart import BartScaledWordEmbedding
    from transformers.models.t5.modeling_t5 import T5LayerNorm
    from transformers.pytorch_utils import Conv1D

    return {nn.Linear: _linear, Conv1D: _conv1d, nn.Embedding: _embedding, BartScaledWordEmbedding: _embedding,
            nn.LayerNorm: _layer_norm, T5LayerNorm: _rms_norm}


@dataclass
class _Use:
    """One call of a hooked module in the current forward pass."""

    module: nn.Module
    input: torch.Tensor
    output: torch.Tensor


@dataclass
class ClipResult:
    """What one clipped backward pass found: per-sample gradient norms (before clipping) and clipping factors."""

    norms: torch.Tensor  # (B,)
    factors: torch.Tensor  # (B,)
    materialised: list[str] = field(default_factory=list)  # parameters whose per-sample gradients were built


class GhostClipper:
    """Hooks on ``model``'s modules that own trainable parameters; :meth:`backward` replaces ``loss.backward()``.

    Usage: ``losses = per-example losses (B,)``; ``clipper.backward(losses)`` sets every trainable ``p.grad`` to
    ``sum_b min(1, C / |g_b|) g_b`` (the sum, not the mean: Opacus' fast-clipping optimizer adds noise of std
    ``sigma C`` and divides by the expected batch size).
    """

    def __init__(self, model: nn.Module, max_grad_norm: float, *, verify_first: bool = True) -> None:
        self.model, self.max_grad_norm = model, float(max_grad_norm)
        self.verify_next = verify_first
        rules = _rules()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.names = {id(p): n for n, p in model.named_parameters()}
        self._uses: list[_Use] = []
        self._handles = []
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if type(module) not in rules:
                raise MpcgenError(f"ghost clipping has no rule for {type(module).__name__} ({name}); supported: "
                                  f"{sorted(t.__name__ for t in rules)}. Use --dp-clipping per-sample")
            self._handles.append(module.register_forward_hook(self._capture))
        self.rules = rules

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # Training forwards only (as Opacus): validation and eval-mode calls are not followed by backward().
        if module.training and torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad:
            self._uses.append(_Use(module, inputs[0].detach(), output))

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def backward(self, losses: torch.Tensor) -> ClipResult:
        """Backward pass of the per-example ``losses`` (B,); sets ``p.grad`` to the clipped sum. See the class."""
        uses, self._uses = self._uses, []
        batch = losses.shape[0]
        verify = self.verify_next
        self.verify_next = False
        reference = (torch.autograd.grad(losses.sum(), self.params, retain_graph=True, allow_unused=True)
                     if verify else None)
        grads = torch.autograd.grad(losses.sum(), [u.output for u in uses], allow_unused=True)
        contributions: dict[int, list] = {id(p): [] for p in self.params}
        low_precision = False
        for use, g in zip(uses, grads):
            if g is None:  # the output did not reach the loss: no gradient from this use
                continue
            if use.input.shape[0] != batch or g.shape[0] != batch:
                raise MpcgenError(f"ghost clipping: {type(use.module).__name__} saw batch {use.input.shape[0]}, "
                                  f"not the loss' {batch} (modules must be batch-first)")
            # Under bf16 autocast the captured tensors are bf16: norms and the clipped sum are both computed in
            # float32 from the same (rounded) tensors, so each clipped contribution is exactly the one whose norm
            # was bounded by C, whatever the forward's precision.
            x = use.input.float() if use.input.is_floating_point() else use.input
            low_precision |= x.dtype != use.input.dtype or g.dtype != torch.float32
            for p, part in self.rules[type(use.module)](use.module, x, g.detach().float()).items():
                if p.requires_grad:
                    contributions[id(p)].append(part)
        sq = torch.zeros(batch, dtype=torch.float32, device=losses.device)
        materialised = []
        for p in self.params:
            parts = contributions[id(p)]
            if parts and _should_materialise(parts, p):
                parts = [_materialise(part, p) for part in parts]
                contributions[id(p)] = parts
                materialised.append(self.names[id(p)])
            sq += _squared_norm(parts, p)
        norms = sq.clamp(min=0).sqrt()
        # Opacus' factor (its +1e-6 keeps a zero gradient finite).
        factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        if verify:
            self._verify(contributions, reference, batch, low_precision)
        for p in self.params:
            grad = _weighted_sum(contributions[id(p)], factors, p)
            p.grad = grad if p.grad is None else p.grad + grad
        return ClipResult(norms.detach(), factors.detach(), materialised)

    def _verify(self, contributions: dict, reference: tuple, batch: int, low_precision: bool = False) -> None:
        """The unclipped sum must be autograd's gradient: else some use of a parameter escaped the hooks.

        Under bf16 autocast autograd's weight gradients are bf16 matmuls and ours float32 ones of the same rounded
        tensors: the tolerance widens to bf16's, still far below the error of a missed use (a whole term)."""
        ones = torch.ones(batch, device=self.params[0].device)
        rtol, atol = (3e-2, 1e-2) if low_precision else (1e-3, 1e-5)
        reference = [torch.zeros_like(p) if r is None else r for p, r in zip(self.params, reference)]
        # Tolerance against the largest gradient entry: some gradients are zero up to rounding (attention key biases).
        scale = max(float(r.abs().max()) for r in reference) + 1e-12
        for p, ref in zip(self.params, reference):
            ours = _weighted_sum(contributions[id(p)], ones, p)
            if not torch.allclose(ours, ref.float(), rtol=rtol, atol=atol * scale):
                raise MpcgenError(f"ghost clipping: the gradient of {self.names[id(p)]} differs from autograd's "
                                  f"(max diff {float((ours - ref).abs().max()):.3g}, max {scale:.3g}): it is used "
                                  "outside the forward of its module; use --dp-clipping per-sample")


def _should_materialise(parts: list, p: nn.Parameter) -> bool:
    """Materialise a single-use dense weight when B T rows cols < B T^2 (rows + cols)."""
    if len(parts) != 1 or not isinstance(parts[0], Factor) or parts[0].one_hot:
        return False
    f = parts[0]
    rows, cols, steps = f.left.shape[-1], f.right.shape[-1], f.left.shape[1]
    return steps * (rows + cols) > rows * cols


def _materialise(part: Union[Factor, torch.Tensor], p: nn.Parameter) -> torch.Tensor:
    """A Factor -> per-sample gradients (B, rows, cols)."""
    if not isinstance(part, Factor):
        return part
    if part.one_hot:  # row ids[t] of example b gets right[b, t]
        index = part.left.unsqueeze(-1).expand(-1, -1, part.right.shape[-1])
        return part.right.new_zeros(part.right.shape[0], *p.shape).scatter_add_(1, index, part.right)
    return torch.bmm(part.left.transpose(1, 2), part.right).view(-1, *p.shape)  # (B, rows, cols)


def _gram_left(u: Factor, v: Factor) -> torch.Tensor:
    """(B, T_u, T_v) of ``l_u[t] . l_v[s]``; a one-hot side turns the dot product into a comparison or a gather."""
    if u.one_hot and v.one_hot:
        return (u.left.unsqueeze(2) == v.left.unsqueeze(1)).to(u.right.dtype)
    if u.one_hot:
        return _gram_left(v, u).transpose(1, 2)
    if v.one_hot:
        # l_u[t] . onehot(ids_v[s]) = l_u[t, ids_v[s]]
        index = v.left.unsqueeze(1).expand(-1, u.left.shape[1], -1)
        return torch.gather(u.left, 2, index)
    return torch.bmm(u.left, v.left.transpose(1, 2))


def _inner(u: Factor, v: Factor) -> torch.Tensor:
    """Per-sample Frobenius inner product <G_u,b, G_v,b> (B,), from the two Gram matrices."""
    right = torch.bmm(u.right, v.right.transpose(1, 2))  # (B, T_u, T_v)
    return (_gram_left(u, v) * right).sum((1, 2))


def _squared_norm(parts: list, p: nn.Parameter) -> torch.Tensor:
    """|sum of the parts|^2 per sample: dense parts are added up; factor parts through all pairwise inner products."""
    factors = [f for f in parts if isinstance(f, Factor)]
    dense = [d for d in parts if not isinstance(d, Factor)]
    if factors and dense:  # no rule mixes them for one parameter today; materialise to stay exact
        dense, factors = [_materialise(part, p) for part in parts], []
    if dense:
        total = dense[0] if len(dense) == 1 else torch.stack(dense).sum(0)
        return total.reshape(total.shape[0], -1).pow(2).sum(1)
    sq = 0
    for i, u in enumerate(factors):
        sq = sq + _inner(u, u)
        for v in factors[i + 1 :]:
            sq = sq + 2 * _inner(u, v)
    return sq


def _weighted_sum(parts: list, weights: torch.Tensor, p: nn.Parameter) -> torch.Tensor:
    """``sum_b weights[b] G_b`` summed over the parts, in ``p``'s shape."""
    out = torch.zeros_like(p)
    for part in parts:
        if not isinstance(part, Factor):
            out += torch.einsum("b,b...->...", weights.to(part.dtype), part).view_as(p)
            continue
        w = weights.view(-1, 1, 1).to(part.right.dtype)
        left, right = part.left, part.right
        if part.one_hot:
            out.index_add_(0, left.reshape(-1), (right * w).reshape(-1, right.shape[-1]))
            continue
        # The weights scale whichever factor is narrower (fewer multiplications), then one matmul.
        if left.shape[-1] < right.shape[-1]:
            left = left * w
        else:
            right = right * w
        out += left.reshape(-1, left.shape[-1]).t().mm(right.reshape(-1, right.shape[-1]))
    return out


__all__ = ["ClipResult", "Factor", "GhostClipper"]
