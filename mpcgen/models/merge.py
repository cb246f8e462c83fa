"""MERGE's merged linear ops: fold products of constant matrices the data passes through in sequence.

Folds applied (all exact; each removes a secret product or a secret elementwise op):

* an ``affine`` norm ``x * gamma + beta`` (or ``centered``: ``(x - mean x) * gamma + beta = x C diag(gamma) + beta``
  with ``C = I - 11^T / d``) in front of linears in a pre-norm block goes into them: ``W' = diag(gamma) W``
  (``C diag(gamma) W``), ``b' = beta W + b``; the norm becomes ``none``. Post-norm (BART) norms feed the residual
  stream too, so they stay. Final norms stay: Embedding Resending needs the normed state.
* constant attention shared by all heads: ``A (x W_V + b_V) W_O + b_O = A (x W_VO + b_VO) + b_O`` with
  ``W_VO = W_V W_O``, ``b_VO = b_V W_O``. The bias is pushed through ``A`` with the values, which keeps it exact
  although masked rows of A do not sum to 1 (the term is ``rowsum(A)[t] * b_VO``).

LayerNorm and RMSNorm divide by a data-dependent scale, so they cannot fold; merging such a model is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.models.layers import Block, MultiHeadAttention, Norm

logger = logging.getLogger(__name__)

FOLDABLE_NORMS = ("affine", "centered", "none")


def merge_model(model: nn.Module, *, check_inputs: dict | None = None, atol: float = 1e-5) -> nn.Module:
    """A merged copy of ``model`` (config ``merged=True``, constant attention frozen), checked against the original.

    Args:
        model: a student built with ``merge_linear=True`` (presets ``merge``, ``merge-mm-only``) and a foldable
            norm (``affine``, ``centered``, ``none``).
        check_inputs: keyword arguments for both forwards; random token ids when None.
        atol: allowed max |logits difference|, scaled by ``max(1, max |logits|)`` (float32 round-off grows with it).

    Returns:
        The merged model (eval mode). The input model is left unchanged.
    """
    from mpcgen.models import build_model

    config = model.config
    if config.merged:
        raise MpcgenError("this model is already merged")
    if not config.merge_linear:
        raise MpcgenError("merging needs merge_linear=True (one constant attention matrix shared by all heads); "
                          "use preset 'merge' or 'merge-mm-only' and train the student with it")
    if config.norm not in FOLDABLE_NORMS:
        raise MpcgenError(f"norm={config.norm!r} cannot fold into a linear layer (it divides by a data-dependent "
                          f"scale); merging needs norm in {sorted(FOLDABLE_NORMS)}")
    source = copy.deepcopy(model).eval()
    source.freeze_constant_attention()
    merged = build_model(dataclasses.replace(config, merged=True, constant_frozen=True)).eval()
    merged.load_state_dict(_merged_state(source, merged), strict=True)
    for name in ("tokenizer",):
        if hasattr(model, name):
            setattr(merged, name, getattr(model, name))
    _check(source, merged, check_inputs, atol)
    return merged


def _merged_state(source: nn.Module, merged: nn.Module) -> dict[str, torch.Tensor]:
    """The merged model's tensors, computed in float64 from the (frozen) source's."""
    src_sd = {k: v.detach().double() for k, v in source.state_dict().items()}
    out = {k: src_sd[k].clone() for k in merged.state_dict() if k in src_sd}
    src_modules = dict(source.named_modules())
    pre_norm = source.config.pre_norm
    for name, block in merged.named_modules():
        if not isinstance(block, Block):
            continue
        src_block = src_modules[name]
        norm1 = _norm_map(src_block.norm1, src_sd, f"{name}.norm1") if pre_norm else None
        _fold_attention(out, src_sd, f"{name}.attn", src_block.attn, block.attn, norm1, query_only=False)
        if block.cross_attn is not None:
            norm_c = _norm_map(src_block.norm_cross, src_sd, f"{name}.norm_cross") if pre_norm else None
            # Cross-attention K/V read the encoder output, so the decoder-side norm only feeds Q.
            _fold_attention(out, src_sd, f"{name}.cross_attn", src_block.cross_attn, block.cross_attn, norm_c,
                            query_only=True)
        norm2 = _norm_map(src_block.norm2, src_sd, f"{name}.norm2") if pre_norm else None
        for lin in ("fc1", "gate"):
            if getattr(block.mlp, lin) is not None:
                _fold_linear(out, src_sd, f"{name}.mlp.{lin}", norm2)
    return {k: out[k].to(v.dtype) for k, v in merged.state_dict().items()}


def _norm_map(norm: Norm, sd: dict[str, torch.Tensor], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A foldable norm as ``x -> x M + c``: (M (d, d), c (d,))."""
    if norm.kind == "none":
        return None, None
    gamma, beta = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    d = gamma.size(0)
    m = torch.diag(gamma)
    if norm.kind == "centered":
        centre = torch.eye(d, dtype=gamma.dtype) - 1.0 / d  # x C = x - mean(x)
        m = centre @ m
    return m, beta


def _fold_linear(out: dict, sd: dict, prefix: str, norm: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``x -> x M + c`` into the Linear at ``prefix``: ``W' = M W``, ``b' = c W + b``; stores and returns."""
    w = sd[f"{prefix}.weight"]
    b = sd.get(f"{prefix}.bias", torch.zeros(w.size(1), dtype=w.dtype))
    if norm is not None and norm[0] is not None:
        m, c = norm
        w, b = m @ w, c @ w + b
    out[f"{prefix}.weight"] = w
    out[f"{prefix}.bias"] = b  # dropped again below when the merged Linear has no bias (nothing folded into it)
    return w, b


def _fold_attention(out: dict, sd: dict, prefix: str, src: MultiHeadAttention, dst: MultiHeadAttention,
                    norm: tuple | None, *, query_only: bool) -> None:
    if not src.constant:
        _fold_linear(out, sd, f"{prefix}.q", norm)
        for name in ("k", "v"):  # cross-attention K/V read the encoder output: nothing folds, but the bias exists
            _fold_linear(out, sd, f"{prefix}.{name}", None if query_only else norm)
        return
    if not dst.merged:
        if not query_only:
            _fold_linear(out, sd, f"{prefix}.v", norm)
        return
    # W_V W_O: the value projection absorbs the output projection (one A shared by all heads).
    w_v, b_v = _fold_linear({}, sd, f"{prefix}.v", None if query_only else norm)
    w_o = sd[f"{prefix}.o.weight"]
    b_o = sd.get(f"{prefix}.o.bias", torch.zeros(w_o.size(1), dtype=w_o.dtype))
    out[f"{prefix}.v.weight"] = w_v @ w_o  # (d, d)
    out[f"{prefix}.v.bias"] = b_v @ w_o
    out[f"{prefix}.o_bias.bias"] = b_o


def _random_inputs(model: nn.Module, seed: int = 0, length: int = 8) -> dict:
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    t = min(length, config.n_positions)
    ids = torch.randint(0, config.vocab_size, (2, t), generator=gen)
    if config.arch == "decoder":
        return {"input_ids": ids}
    mask = torch.ones(2, t, dtype=torch.long)
    mask[1, t // 2:] = 0  # exercise the padding path of constant encoder/cross attention
    return {"input_ids": ids, "attention_mask": mask,
            "decoder_input_ids": torch.randint(0, config.vocab_size, (2, t), generator=gen)}


# Random ids are far from what a trained student saw: one whose approximations only hold on its data (2Quad-lite's
# reciprocal diverges past its range) can give non-finite logits on them, so shorter random inputs are tried too.
_CHECK_INPUTS = ((0, 8), (1, 4), (2, 4), (3, 2), (4, 2))


def _check(source: nn.Module, merged: nn.Module, inputs: dict | None, atol: float) -> None:
    candidates = [inputs] if inputs is not None else [_random_inputs(source, s, t) for s, t in _CHECK_INPUTS]
    with torch.no_grad():
        for candidate in candidates:
            ref = source(**candidate).logits
            if torch.isfinite(ref).all():
                break
        else:
            raise MpcgenError("cannot check the merged model: the unmerged one gives non-finite logits on every "
                              "check input (pass check_inputs from its own data)")
        got = merged(**candidate).logits
    diff = (ref - got).abs().max().item()
    bound = atol * max(1.0, ref.abs().max().item())
    logger.info("merge check: max |logits difference| %.3g (bound %.3g)", diff, bound)
    if not diff <= bound:
        raise MpcgenError(f"merged and unmerged models differ by {diff:.3g} > {bound:.3g}; a fold is not exact")


__all__ = ["FOLDABLE_NORMS", "merge_model"]
