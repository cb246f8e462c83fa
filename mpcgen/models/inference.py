"""The inference form of a model: what the weight owner computes in plaintext before serving (private or not)."""

from __future__ import annotations

import copy

from torch import nn


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """The inference form of ``model``, computed in plaintext by the weight owner (exact; the input is unchanged).

    Students with ``merge_linear`` are merged (:func:`mpcgen.models.merge.merge_model`: constant products folded,
    ``A = softmax(M)`` stored); other students with constant attention get ``A`` stored. Otherwise a no-op.
    """
    from mpcgen.models.layers import AttentionCore
    from mpcgen.models.merge import FOLDABLE_NORMS, merge_model

    config = model.config
    if config.merge_linear and not config.merged and config.norm in FOLDABLE_NORMS:
        return merge_model(model)
    if not config.constant_frozen and any(isinstance(m, AttentionCore) and m.is_constant for m in model.modules()):
        model = copy.deepcopy(model)
        model.freeze_constant_attention()
    return model


__all__ = ["prepare_for_inference"]
