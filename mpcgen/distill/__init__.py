"""Stage 2 library: build a student from a fine-tuned teacher and the losses that distil the teacher into it.

Teachers: GPT-2 (decoder-only), T5 and BART (encoder-decoder), through one code path.

* :mod:`~mpcgen.distill.student`: :func:`build_student` (``import_hf(teacher, preset)`` plus the per-layer attention
  choice and the ER resend norm) and :func:`load_student` (refuses a different preset than expected).
* :mod:`~mpcgen.distill.stats`: the teacher's statistics on real examples; :func:`init_constant_attention` starts
  constant attention from its mean attention maps, :func:`init_affine_norms` calibrates affine norms to the norms
  they replace.
* :mod:`~mpcgen.distill.objective`: :class:`Layout` (a batch's decoder side for either architecture) and
  :class:`Distiller`, the training objective hooked into :class:`mpcgen.train.Trainer`.
"""

from __future__ import annotations

from mpcgen.distill.objective import (
    PRESET_LOSSES,
    Distiller,
    Layout,
    LossWeights,
    forward_layout,
    layout,
    loss_weights,
    param_groups,
    weights_dict,
)
from mpcgen.distill.stats import (
    MASKED_LOGIT,
    MIN_MEAN_ATTENTION,
    MeanAttention,
    TeacherStats,
    calibrate_lite_attention,
    constant_logits_from_mean,
    init_affine_norms,
    init_constant_attention,
    norm_pairs,
    teacher_name_map,
    teacher_statistics,
)
from mpcgen.distill.student import (
    attention_layers,
    build_student,
    decoder_layer_count,
    embedding_rms,
    has_constant_attention,
    load_hf_teacher,
    load_student,
    read_teacher,
    token_embeddings,
    token_table,
)

__all__ = ["Distiller", "Layout", "LossWeights", "MASKED_LOGIT", "MIN_MEAN_ATTENTION", "MeanAttention",
           "PRESET_LOSSES", "TeacherStats", "attention_layers", "build_student", "calibrate_lite_attention",
           "constant_logits_from_mean",
           "decoder_layer_count", "embedding_rms", "forward_layout", "has_constant_attention", "init_affine_norms",
           "init_constant_attention", "layout", "load_hf_teacher", "load_student", "loss_weights", "norm_pairs",
           "param_groups", "read_teacher", "teacher_name_map", "teacher_statistics", "token_embeddings",
           "token_table", "weights_dict"]
