"""Stage 2: distil a fine-tuned teacher into an MPC-friendly student (MERGE, MPCformer, THE-X and ablations).

    python -m distill.run --teacher stage1_ckpts/e2e_nlg-gpt2 --preset merge --max-minutes 30
    python -m distill.run --teacher T --preset mpcformer --constant-attention-layers 2,3 --max-steps 2000
    python -m distill.run --teacher stage1_ckpts/e2e_nlg-t5 --preset mpcformer --max-minutes 20

Teachers: GPT-2, T5 and BART (encoder-decoder students train their encoder on the source and everything
generation-related, ER included, on the decoder side).

The student starts from the teacher's weights (``import_hf(teacher, preset=...)``) and trains on the teacher's task
with the losses of :mod:`mpcgen.distill` (each weight a flag; unset flags take the preset's recipe). Output folder
(default ``stage2_ckpts/<task>-<family>-<preset>``): the best student by validation objective (``config.json`` with
the preset + ``model.safetensors`` + the teacher's tokenizer), ``training_args.json``, ``trainer_state.json``,
``resume/`` and ``runs/`` (TensorBoard), written by the stage-1 loop (:class:`mpcgen.train.Trainer`).
``--resume auto`` continues from ``resume/``. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import HfArgumentParser

from mpcgen import distill as D
from mpcgen import train as T
from mpcgen.checkpoint import check_resume_settings, find_resume
from mpcgen.data import canonical_task, delex, resolve_data_dir
from mpcgen.errors import MpcgenError
from mpcgen.models import PRESETS
from mpcgen.tokenization import TRUNCATIONS
from mpcgen.train import Trainer, TrainHooks, TrainPlan

logger = logging.getLogger("distill.run")


@dataclass
class StudentArguments:
    teacher: str = field(metadata={"help": "stage-1 teacher folder (HF checkpoint + training_args.json)"})
    preset: str = field(metadata={"help": f"student preset: one of {sorted(PRESETS)}"})
    task: Optional[str] = field(default=None, metadata={"help": "task (default: the teacher's; must match it)"})
    data_dir: Optional[str] = field(default=None, metadata={"help": "dataset folder (default: $MPCGEN_DATA_DIR)"})
    max_length: Optional[int] = field(default=None, metadata={"help": "max tokens per sequence (default: teacher's)"})
    limit_train: Optional[int] = field(default=None, metadata={"help": "use only the first N training examples"})
    limit_val: int = field(default=500, metadata={"help": "validation examples for the validation objective"})
    holdout_percent: float = field(default=5.0, metadata={
        "help": "held-out percent of sources for validation: tasks without a train split, and --train-file"})
    train_file: Optional[str] = field(default=None, metadata={
        "help": "JSON Lines of {source, target} to distil on instead of the task's data (train and validation "
                "both, by --holdout-percent): e.g. a DP teacher's texts on public inputs, so that the student "
                "never sees the private training set (scripts/public_distill_data.py)"})
    constant_attention_layers: Optional[str] = field(default=None, metadata={
        "help": "layers with constant attention: all | none | comma-separated indices (default: the preset's); "
                "encoder-decoders: decoder layers (self- and cross-attention), the encoder keeps the preset's"})
    attention: Optional[str] = field(default=None, metadata={
        "help": "content-dependent attention of the other layers (default: the preset's, or 2quad)"})
    constant_init: str = field(default="teacher", metadata={
        "help": "constant attention start: teacher (log of the teacher's mean attention) | uniform (M = 0)"})
    norm_init: str = field(default="teacher", metadata={
        "help": "affine/centred norms: teacher (calibrated to the LayerNorm input statistics) | copy (gamma, beta)"})
    reciprocal_lr_scale: float = field(default=0.0, metadata={
        "help": "thex: lr multiplier of the reciprocal estimator (0 keeps its 1/x interpolant; its weights span 1e-6..1e3)"})
    lite_range: str = field(default="standard", metadata={
        "help": "2quad-lite reciprocal range, same cost: standard ([0.25, 16]) | high ([0.5, 32]: sharper rows, "
                "rows with 1-3 keys less exact)"})
    teacher_init_examples: int = field(default=256, metadata={"help": "training examples for the teacher inits"})
    resend_norm: str = field(default="auto", metadata={
        "help": "ER: norm of the resent state, part of resend_embedding: rmsnorm | none | auto (rmsnorm for ER presets)"})


@dataclass
class LossArguments:
    ce_weight: Optional[float] = field(default=None, metadata={"help": "weight of CE on targets (preset default)"})
    kl_weight: Optional[float] = field(default=None, metadata={"help": "weight of KL to the teacher's logits"})
    hidden_weight: Optional[float] = field(default=None, metadata={"help": "weight of the per-layer hidden MSE"})
    temperature: Optional[float] = field(default=None, metadata={"help": "KL temperature (default 1)"})
    er_lambda: Optional[float] = field(default=None, metadata={"help": "ER: weight lam of 1 - cos(h_t, E(x_t+1))"})
    er_noise: Optional[float] = field(default=None, metadata={
        "help": "ER: uniform noise amplitude on generated inputs' embeddings, in units of the embedding RMS"})
    er_dropout: Optional[float] = field(default=None, metadata={"help": "ER: dropout on generated inputs' embeddings"})
    er_rollout_prob: Optional[float] = field(default=None, metadata={
        "help": "ER: share of generated positions fed resent states in training (needs --er-unroll >= 1)"})
    er_unroll: Optional[int] = field(default=None, metadata={"help": "ER: no-grad passes producing the resent states"})
    er_self: Optional[float] = field(default=None, metadata={
        "help": "ER: weight of relu(cos(r(h_t), E(x_t))), a resent state pointing at its own input token"})
    range_weight: Optional[float] = field(default=None, metadata={
        "help": "2quad-lite: weight of the penalty on reciprocal arguments past its safe bound (preset lite: 1)"})


@dataclass
class TrainArguments:
    out: Optional[str] = field(default=None, metadata={"help": "output folder (default stage2_ckpts/<task>-<family>-<preset>)"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "optimizer steps (overrides --epochs)"})
    epochs: Optional[float] = field(default=None, metadata={"help": "epochs (default 1 without a step/time budget)"})
    max_minutes: Optional[float] = field(default=None, metadata={"help": "wall-clock budget (schedule fitted to it)"})
    batch_size: int = field(default=16, metadata={"help": "batch size"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (AdamW; MERGE's GPU recipe: 8e-5, batch 32)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps (capped at 10%% of the run)"})
    schedule: str = field(default="cosine", metadata={"help": "cosine | linear | constant"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on vectors)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    eval_every: int = field(default=200, metadata={"help": "validate (and save) every N steps"})
    group_by_length: bool = field(default=False, metadata={"help": "batches of similar lengths (less padding)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    num_threads: Optional[int] = field(default=None, metadata={"help": "torch threads (default: all cores)"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast for forward passes"})
    resume: str = field(default="auto", metadata={"help": "auto | yes | no"})


ARG_CLASSES = (StudentArguments, LossArguments, TrainArguments)
# A resume state is only valid for the same teacher, task, student shape and objective.
RESUME_KEYS = ("teacher", "task", "preset", "attention_layers", "resend_norm", "lite_range", "max_length", "loss",
               "train_file")


def _resend_norm(sargs: StudentArguments) -> str:
    if sargs.resend_norm == "auto":
        return "rmsnorm" if PRESETS[sargs.preset]["embedding_resend"] else "none"
    if sargs.resend_norm not in ("rmsnorm", "none"):
        raise MpcgenError(f"--resend-norm {sargs.resend_norm!r}: choose one of ['auto', 'none', 'rmsnorm']")
    return sargs.resend_norm


def _init_from_teacher(student, sargs: StudentArguments, rows: list, collate) -> None:
    """Start constant attention and affine norms from the teacher's statistics on the first training rows, and keep
    2Quad-lite's reciprocal in its range there."""
    constant = sargs.constant_init == "teacher" and D.has_constant_attention(student)
    norms = sargs.norm_init == "teacher" and student.config.norm in ("affine", "centered")
    lite = any(getattr(m, "kind", None) == "2quad-lite" for m in student.modules())
    if not (constant or norms or lite):
        return
    hf = D.load_hf_teacher(sargs.teacher)
    rows = rows[: sargs.teacher_init_examples]
    stats = D.teacher_statistics(hf, [collate(rows[i:i + 32]) for i in range(0, len(rows), 32)])
    if constant:
        logger.info("%d constant attentions set from the teacher's mean attention over %d examples",
                    D.init_constant_attention(student, stats), len(rows))
    if norms:
        logger.info("%d %s norms calibrated to the teacher's norm input statistics over %d examples",
                    D.init_affine_norms(student, stats), student.config.norm, len(rows))
    if lite:  # after the norms: the attention inputs are what the calibrated student computes
        factors = D.calibrate_lite_attention(student, [collate(rows[i:i + 32]) for i in range(0, len(rows), 32)])
        logger.info("2quad-lite: query projections scaled to keep the reciprocal in range over %d examples: %s",
                    len(rows), ", ".join(f"{n} x{f:.3g}" for n, f in factors.items()))



def run(sargs: StudentArguments, largs: LossArguments, targs: TrainArguments) -> dict:
    torch.set_num_threads(targs.num_threads or os.cpu_count() or 1)
    torch.manual_seed(targs.seed)
    if sargs.preset not in PRESETS:
        raise MpcgenError(f"--preset {sargs.preset!r} is not supported; choose one of {sorted(PRESETS)}")
    if sargs.constant_init not in ("teacher", "uniform"):
        raise MpcgenError(f"--constant-init {sargs.constant_init!r}: choose one of ['teacher', 'uniform']")
    if sargs.norm_init not in ("teacher", "copy"):
        raise MpcgenError(f"--norm-init {sargs.norm_init!r}: choose one of ['copy', 'teacher']")
    if targs.resume not in ("auto", "yes", "no"):
        raise MpcgenError(f"unknown --resume {targs.resume!r}; choose one of ['auto', 'no', 'yes']")
    teacher_args = D.read_teacher(sargs.teacher)
    task = canonical_task(sargs.task or teacher_args.get("task", ""))
    if teacher_args.get("task") and canonical_task(teacher_args["task"]) != task:
        raise MpcgenError(f"--teacher {sargs.teacher} was fine-tuned on {teacher_args['task']}, not {task}")
    max_length = sargs.max_length or int(teacher_args.get("max_length", 128))
    weights = D.loss_weights(sargs.preset, ce=largs.ce_weight, kl=largs.kl_weight, hidden=largs.hidden_weight,
                             temperature=largs.temperature, er_lambda=largs.er_lambda, er_noise=largs.er_noise,
                             er_dropout=largs.er_dropout, er_rollout_prob=largs.er_rollout_prob,
                             er_unroll=largs.er_unroll, er_self=largs.er_self, range=largs.range_weight)
    resend_norm = _resend_norm(sargs)
    student = D.build_student(sargs.teacher, sargs.preset, constant_layers=sargs.constant_attention_layers,
                              attention=sargs.attention, resend_norm=resend_norm, lite_range=sargs.lite_range)
    family = student.config.family
    encoder_decoder = student.config.arch == "encoder-decoder"
    out = Path(targs.out or f"stage2_ckpts/{task}-{family}-{sargs.preset}")
    out.mkdir(parents=True, exist_ok=True)

    all_args = {k: v for a in (sargs, largs, targs) for k, v in dataclasses.asdict(a).items()}
    all_args.update(task=task, teacher=str(sargs.teacher), model=family, max_length=max_length,
                    resend_norm=resend_norm, attention_layers=student.config.attention_layers,
                    loss=D.weights_dict(weights), data_dir=str(resolve_data_dir(sargs.data_dir)),
                    is_encoder_decoder=encoder_decoder, teacher_training_args=teacher_args)
    resume_dir = find_resume(out) if targs.resume != "no" else None
    if targs.resume == "yes" and resume_dir is None:
        raise MpcgenError(f"--resume yes but {out}/resume holds no training state")
    if resume_dir is not None:
        check_resume_settings(resume_dir, all_args, RESUME_KEYS)

    if sargs.train_file is not None:
        (train_ex, val_ex), train_split = T.load_pairs_file(sargs.train_file, sargs.holdout_percent), "train_file"
    else:
        train_ex, val_ex, train_split = T.load_splits(task, sargs.data_dir, sargs.holdout_percent)
    if sargs.limit_train:
        train_ex = train_ex[: sargs.limit_train]
    val_ex = val_ex[: sargs.limit_val]
    tokenizer = getattr(student, "tokenizer", None)
    if tokenizer is None:
        raise MpcgenError(f"--teacher {sargs.teacher} holds no tokenizer files; the student needs the teacher's")
    scheme = delex.scheme_of(tokenizer)
    if scheme is not None:  # the teacher learnt delexicalised pairs: the student learns the same
        train_ex, val_ex = delex.delexicalise_examples(train_ex, scheme), delex.delexicalise_examples(val_ex, scheme)
    TRUNCATIONS.clear()
    train_rows = T.encode_examples(tokenizer, train_ex, is_encoder_decoder=encoder_decoder, max_length=max_length)
    val_rows = T.encode_examples(tokenizer, val_ex, is_encoder_decoder=encoder_decoder, max_length=max_length)
    if TRUNCATIONS:
        logger.warning("truncated to --max-length %d: %s", max_length, dict(TRUNCATIONS))

    if resume_dir is None:  # a resumed run loads every weight
        _init_from_teacher(student, sargs, train_rows, T.Collator(tokenizer.pad_token_id))
    teacher = None
    if weights.kl or weights.hidden:
        from mpcgen.models import import_hf

        teacher = import_hf(sargs.teacher, "vanilla")
    distiller = D.Distiller(teacher, weights, embedding_resend=student.config.embedding_resend)

    steps_per_epoch = math.ceil(len(train_rows) / targs.batch_size)
    if targs.max_steps:
        total = targs.max_steps
    elif targs.epochs or not targs.max_minutes:
        total = max(1, round((targs.epochs or 1.0) * steps_per_epoch))
    else:
        total = None  # fitted to --max-minutes
    n_params = sum(p.numel() for p in student.parameters())
    training_args = {**all_args, "train_split": train_split, "n_train": len(train_rows), "n_val": len(val_rows),
                     "n_parameters": n_params, "truncations": dict(TRUNCATIONS)}
    logger.info("%s student of %s (%s): %.2fM parameters, attention %s, loss %s, %d train / %d val examples, out %s",
                sargs.preset, sargs.teacher, family, n_params / 1e6,
                student.config.attention_layers or student.config.attention, D.weights_dict(weights),
                len(train_rows), len(val_rows), out)
    plan = TrainPlan(total_steps=total, max_minutes=targs.max_minutes, lr=targs.lr, warmup=targs.warmup_steps,
                     schedule=targs.schedule, weight_decay=targs.weight_decay, batch_size=targs.batch_size,
                     eval_every=targs.eval_every, max_grad_norm=targs.max_grad_norm, seed=targs.seed, bf16=targs.bf16,
                     group_by_length=targs.group_by_length)
    hooks = TrainHooks(loss=distiller.loss, val_loss=distiller.val_loss, resume_config=student.config,
                       param_groups=functools.partial(D.param_groups, reciprocal_lr_scale=sargs.reciprocal_lr_scale))
    trainer = Trainer(student, tokenizer, train_rows, val_rows, plan, out=out, rank=0, world=1,
                      is_encoder_decoder=encoder_decoder, training_args=training_args, hooks=hooks)
    # The imported student's objective, so a run shows what distillation gained (not repeated on resume).
    initial = distiller.val_loss(student, trainer.val_batches) if resume_dir is None else None
    if initial is not None:
        logger.info("validation objective before distillation: %.4f", initial)
    summary = trainer.train(resume_dir)
    summary.update(preset=sargs.preset, teacher=str(sargs.teacher), task=task, initial_val_loss=initial)
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    parser = HfArgumentParser(ARG_CLASSES, description=__doc__.split("\n")[0])
    sargs, largs, targs = parser.parse_args_into_dataclasses(args=argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run(sargs, largs, targs)
    except MpcgenError as exc:
        logger.error("%s", exc)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
