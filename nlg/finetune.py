"""Stage 1: fine-tune a teacher (GPT-2, T5 or BART) on an NLG task, optionally with DP-SGD.

    python -m nlg.finetune --task e2e --model gpt2 --init scratch --size small --max-minutes 55
    torchrun --nproc_per_node 2 -m nlg.finetune --task e2e --model gpt2 --init scratch --size tiny --max-steps 50

Writes ``<out>/`` (best model by validation loss, HF format, + training_args.json, trainer_state.json), ``<out>/resume/``
(latest state) and ``<out>/runs/`` (TensorBoard); see :mod:`mpcgen.checkpoint`. ``--resume auto`` (the default)
continues from ``<out>/resume/`` when it exists, ``yes`` requires it, ``no`` starts over. The last stdout line is a
JSON summary.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from transformers import HfArgumentParser

from mpcgen import train as T
from mpcgen.data import canonical_task, delex, resolve_data_dir
from mpcgen.data.delex import DELEX_TASKS
from mpcgen.errors import MpcgenError
from mpcgen.models.config import FAMILIES
from mpcgen.tokenization import TRUNCATIONS, train_bpe_tokenizer
from mpcgen.train import OPTIMIZERS, Trainer, TrainPlan, load_splits

logger = logging.getLogger("nlg.finetune")


@dataclass
class DataArguments:
    task: str = field(default="e2e", metadata={
        "help": "e2e | webnlg | multiwoz (or e2e_nlg, web_nlg, multiwoz_nlg); several joined by '+' train one model "
                "on their union (e.g. webnlg+multiwoz: a public corpus to pre-train on before DP fine-tuning on "
                "e2e); --limit-train then applies to each"})
    data_dir: Optional[str] = field(default=None, metadata={"help": "dataset folder (default: $MPCGEN_DATA_DIR)"})
    max_length: int = field(default=128, metadata={"help": "max tokens per sequence (source is truncated first)"})
    limit_train: Optional[int] = field(default=None, metadata={"help": "use only the first N training examples"})
    limit_val: int = field(default=1000, metadata={"help": "validation examples used for the validation loss"})
    holdout_percent: float = field(default=5.0, metadata={
        "help": "tasks without a train split (multiwoz), and --train-file: percent of sources held out for validation"})
    train_file: Optional[str] = field(default=None, metadata={
        "help": "train on this JSON Lines file of {source, target} pairs instead of the task's data (e.g. public "
                "templated E2E pairs from scripts/public_distill_data.py --realiser template, to pre-train on before "
                "DP fine-tuning); --task then names the format, for evaluation"})
    delex: Optional[str] = field(default=None, metadata={
        "help": "delexicalise slot values: multiwoz (copy-type: names, refs, ids, addresses, phones, times...) "
                "or multiwoz-all (every slot with a value): placeholders in sources and targets; e2e: name and "
                "near likewise; webnlg: entities tagged in the source, replaced in the targets; values re-inserted "
                "by the client after decoding (mpcgen.data.delex); recorded in the tokenizer"})


@dataclass
class ModelArguments:
    model: str = field(default="gpt2", metadata={"help": f"model family: one of {sorted(FAMILIES)}"})
    init: str = field(default="pretrained", metadata={"help": "pretrained (from_pretrained) | scratch (random init)"})
    name_or_path: Optional[str] = field(default=None, metadata={
        "help": "pretrained checkpoint (default gpt2 / t5-small / facebook/bart-base)"})
    size: str = field(default="small", metadata={"help": "scratch geometry: tiny | small | base"})
    vocab_size: int = field(default=4096, metadata={"help": "scratch: BPE vocabulary trained on the train split"})
    dropout: float = field(default=0.1, metadata={"help": "scratch: dropout"})
    freeze: Optional[str] = field(default=None, metadata={
        "help": "comma-separated substrings of parameter names to keep fixed (e.g. 'wte,wpe': GPT-2's embeddings, "
                "for DP fine-tuning of a publicly pre-trained model: fewer noised coordinates)"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters only (merged before every save)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})


@dataclass
class TrainArguments:
    out: Optional[str] = field(default=None, metadata={"help": "output folder (default stage1_ckpts/<task>-<model>[-dp])"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "optimizer steps (overrides --epochs)"})
    epochs: Optional[float] = field(default=None, metadata={"help": "epochs (default 1 when no step/time budget)"})
    max_minutes: Optional[float] = field(default=None, metadata={
        "help": "wall-clock budget: the schedule is fitted to it from measured step time; stops, evaluates, saves"})
    batch_size: int = field(default=32, metadata={"help": "batch per process (DP: expected Poisson batch)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    optim: str = field(default="adamw", metadata={
        "help": "adamw | adafactor (T5's optimiser, updates scaled by each weight's RMS: use --lr ~1e-2)"})
    warmup_steps: int = field(default=200, metadata={"help": "linear warmup steps (capped at 10%% of the run)"})
    schedule: str = field(default="cosine", metadata={"help": "decay after warmup: cosine | linear | constant"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases and norms)"})
    eval_every: int = field(default=500, metadata={"help": "validate (and save) every N steps"})
    group_by_length: bool = field(default=False, metadata={
        "help": "batches of similar lengths (less padding: ~2x the examples per second on WebNLG); not with --dp, "
                "whose batches are Poisson samples"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    num_threads: Optional[int] = field(default=None, metadata={"help": "torch threads per process (default cores/procs)"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast for the forward pass (faster on CPUs "
                                                    "with AVX512-BF16/AMX); with --dp, ghost clipping only"})
    resume: str = field(default="auto", metadata={"help": "auto: continue from <out>/resume if present | yes | no"})


@dataclass
class DPArguments:
    dp: bool = field(default=False, metadata={"help": "DP-SGD with Opacus (Poisson sampling, per-sample clipping)"})
    target_epsilon: float = field(default=8.0, metadata={"help": "privacy budget epsilon for the planned steps"})
    delta: Optional[float] = field(default=None, metadata={"help": "delta (default 1/(10 N), N = training examples)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clipping norm (DP: per sample; else global)"})
    accountant: str = field(default="rdp", metadata={"help": "rdp | prv"})
    dp_clipping: str = field(default="ghost", metadata={
        "help": "per-sample clipping without per-sample gradients (ghost, fast) | Opacus' per-sample gradients "
                "(per-sample, the reference); both clip every example to --max-grad-norm"})
    dp_physical_batch_size: Optional[int] = field(default=None, metadata={
        "help": "ghost clipping: examples per backward pass; a larger --batch-size (the expected Poisson batch, one "
                "DP step) is processed in chunks of this size (default: the whole batch at once)"})


ARG_CLASSES = (DataArguments, ModelArguments, TrainArguments, DPArguments)
# A resume state is only valid for the same task, model and training mode.
RESUME_KEYS = ("task", "model", "init", "name_or_path", "size", "lora", "dp_enabled", "max_length", "freeze", "delex",
               "optim", "train_file")
# What a checkpoint written before a setting existed was trained with.
RESUME_DEFAULTS = {"optim": "adamw", "train_file": None}


def _dist() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; initialises gloo when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return rank, world


def build(margs: ModelArguments, max_length: int, train_texts: list[str], rank: int, world: int, resume_dir):
    """(model, tokenizer) from a resume state, a pretrained checkpoint, or from scratch."""
    spec = T.family_spec(margs.model)
    if resume_dir is not None:
        from transformers import AutoConfig, AutoTokenizer
        return spec.model_cls(AutoConfig.from_pretrained(resume_dir)), AutoTokenizer.from_pretrained(resume_dir)
    if margs.init == "pretrained":
        return T.load_pretrained(margs.model, margs.name_or_path or spec.default_name, max_length=max_length)
    if margs.init != "scratch":
        raise MpcgenError(f"unknown --init {margs.init!r}; choose one of ['pretrained', 'scratch']")
    # Rank 0 trains the tokenizer and sends it to the others, so every rank has the same vocabulary.
    payload = [train_bpe_tokenizer(train_texts, margs.vocab_size).backend_tokenizer.to_str() if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(payload, src=0)
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    from mpcgen.tokenization import SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(payload[0]), **SPECIAL_TOKENS)
    return T.build_scratch_model(margs.model, margs.size, tokenizer, max_length=max_length,
                                 dropout=margs.dropout), tokenizer


def run(dargs: DataArguments, margs: ModelArguments, targs: TrainArguments, pargs: DPArguments) -> dict:
    rank, world = _dist()
    torch.set_num_threads(targs.num_threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(targs.seed)
    tasks = [canonical_task(t) for t in dargs.task.split("+")]
    if len(set(tasks)) != len(tasks):
        raise MpcgenError(f"--task {dargs.task!r} names a task twice")
    task = "+".join(tasks)
    spec = T.family_spec(margs.model)
    if targs.resume not in ("auto", "yes", "no"):
        raise MpcgenError(f"unknown --resume {targs.resume!r}; choose one of ['auto', 'no', 'yes']")
    if pargs.accountant not in ("rdp", "prv"):
        raise MpcgenError(f"unknown --accountant {pargs.accountant!r}; choose one of ['prv', 'rdp']")
    if dargs.delex is not None and DELEX_TASKS[delex.check_scheme(dargs.delex)] not in tasks:
        raise MpcgenError(f"--delex {dargs.delex} applies to task {DELEX_TASKS[dargs.delex]}, which --task "
                          f"{dargs.task!r} does not include")
    if targs.optim not in OPTIMIZERS:
        raise MpcgenError(f"unknown --optim {targs.optim!r}; choose one of {list(OPTIMIZERS)}")
    if pargs.dp_clipping not in T.CLIPPINGS:
        raise MpcgenError(f"unknown --dp-clipping {pargs.dp_clipping!r}; choose one of {sorted(T.CLIPPINGS)}")
    if pargs.dp_physical_batch_size is not None:
        if not pargs.dp or pargs.dp_clipping != "ghost":
            raise MpcgenError("--dp-physical-batch-size needs --dp with --dp-clipping ghost")
        if pargs.dp_physical_batch_size < 1:
            raise MpcgenError(f"--dp-physical-batch-size must be >= 1, got {pargs.dp_physical_batch_size}")
    if targs.group_by_length and pargs.dp:
        raise MpcgenError("--group-by-length does not apply to --dp: a DP step's batch is a Poisson sample (the "
                          "privacy accounting assumes it), not a length-sorted group")
    if targs.bf16 and pargs.dp and pargs.dp_clipping != "ghost":
        raise MpcgenError("--bf16 with --dp needs --dp-clipping ghost (Opacus' per-sample gradients are float32)")
    out = Path(targs.out or f"stage1_ckpts/{task}-{margs.model}{'-dp' if pargs.dp else ''}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    from mpcgen.checkpoint import check_resume_settings, find_resume
    resume_dir = find_resume(out) if targs.resume != "no" else None
    if targs.resume == "yes" and resume_dir is None:
        raise MpcgenError(f"--resume yes but {out}/resume holds no training state")
    all_args = {k: v for cls_args in (dargs, margs, targs, pargs) for k, v in dataclasses.asdict(cls_args).items()}
    all_args.update(task=task, data_dir=str(resolve_data_dir(dargs.data_dir)), dp_enabled=pargs.dp)
    if resume_dir is not None:
        check_resume_settings(resume_dir, all_args, RESUME_KEYS, defaults=RESUME_DEFAULTS)

    if dargs.train_file is not None and len(tasks) > 1:
        raise MpcgenError(f"--train-file replaces one task's data; --task {dargs.task!r} names several")
    train_ex, val_ex, splits = [], [], []
    for name in tasks:
        if dargs.train_file is not None:
            (train_t, val_t), split_t = T.load_pairs_file(dargs.train_file, dargs.holdout_percent), "train_file"
        else:
            train_t, val_t, split_t = load_splits(name, dargs.data_dir, dargs.holdout_percent)
        if dargs.delex is not None and name == DELEX_TASKS[dargs.delex]:
            train_t, val_t = delex.delexicalise_examples(train_t, dargs.delex), delex.delexicalise_examples(val_t, dargs.delex)
        train_ex += train_t[: dargs.limit_train] if dargs.limit_train else train_t
        # Validation interleaved by task, so --limit-val keeps a share of each.
        val_ex.append(val_t)
        splits.append(split_t)
    val_ex = [ex for group in itertools.zip_longest(*val_ex) for ex in group if ex is not None]
    val_ex = val_ex[: dargs.limit_val]
    train_split = "+".join(splits)
    model, tokenizer = build(margs, dargs.max_length, [t for ex in train_ex for t in (ex.source, ex.target)],
                             rank, world, resume_dir)
    delex.mark(tokenizer, dargs.delex)  # what the data was, whatever a pretrained tokenizer said before
    TRUNCATIONS.clear()
    encode = dict(is_encoder_decoder=spec.is_encoder_decoder, max_length=dargs.max_length)
    train_rows, val_rows = T.encode_examples(tokenizer, train_ex, **encode), T.encode_examples(tokenizer, val_ex, **encode)
    if TRUNCATIONS:
        logger.warning("truncated to --max-length %d: %s", dargs.max_length, dict(TRUNCATIONS))

    frozen = T.freeze_for_dp(model, margs.model) if pargs.dp else []
    if margs.freeze:
        frozen += T.freeze_parameters(model, [p.strip() for p in margs.freeze.split(",") if p.strip()])
    if margs.lora:
        model = T.apply_lora(model, margs.model, r=margs.lora_r, alpha=margs.lora_alpha, dropout=0.05)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    global_batch = targs.batch_size * world
    steps_per_epoch = math.ceil(len(train_rows) / global_batch)
    if targs.max_steps:
        total = targs.max_steps
    elif targs.epochs or not targs.max_minutes:
        total = max(1, round((targs.epochs or 1.0) * steps_per_epoch))
    else:
        total = None  # fitted to --max-minutes once the step time is measured
    delta = pargs.delta or 1.0 / (10 * len(train_rows))
    dp_plan = None
    if pargs.dp:
        if total is None:
            raise MpcgenError("--dp needs --max-steps or --epochs: the noise is calibrated to the number of steps "
                              "before training (--max-minutes may still stop earlier)")
        # The rate Opacus' Poisson loader samples at and its accountant charges: 1 / (batches per epoch).
        rate = 1.0 / steps_per_epoch
        sigma = T.plan_noise(target_epsilon=pargs.target_epsilon, delta=delta, sample_rate=rate, steps=total,
                             accountant=pargs.accountant)
        dp_plan = T.DPPlan(pargs.target_epsilon, delta, pargs.max_grad_norm, rate, total, sigma, pargs.accountant,
                           frozen, clipping=pargs.dp_clipping, physical_batch_size=pargs.dp_physical_batch_size)
        logger.info("DP-SGD (%s clipping): epsilon %.3g, delta %.3g, sample rate %.4g, %d steps -> noise multiplier "
                    "%.4g", pargs.dp_clipping, pargs.target_epsilon, delta, rate, total, sigma)

    training_args = {**all_args, "model": margs.model, "is_encoder_decoder": spec.is_encoder_decoder,
                     "max_length": dargs.max_length, "train_split": train_split, "n_train": len(train_rows),
                     "n_val": len(val_rows), "world_size": world, "global_batch_size": global_batch,
                     "n_parameters": n_params, "n_trainable_parameters": n_train, "frozen_parameters": frozen,
                     "dp": dataclasses.asdict(dp_plan) if dp_plan else None,
                     "truncations": dict(TRUNCATIONS)}
    if rank == 0:
        logger.info("%s %s (%s): %.2fM parameters (%.2fM trainable), %d train / %d val examples, batch %d, out %s",
                    margs.model, margs.init, margs.size if margs.init == "scratch" else margs.name_or_path or
                    spec.default_name, n_params / 1e6, n_train / 1e6, len(train_rows), len(val_rows), global_batch,
                    out)
    plan = TrainPlan(total_steps=total, max_minutes=targs.max_minutes, lr=targs.lr, warmup=targs.warmup_steps,
                     schedule=targs.schedule, weight_decay=targs.weight_decay, batch_size=targs.batch_size,
                     eval_every=targs.eval_every, max_grad_norm=pargs.max_grad_norm, seed=targs.seed, dp=dp_plan,
                     bf16=targs.bf16, optimizer=targs.optim, group_by_length=targs.group_by_length)
    trainer = Trainer(model, tokenizer, train_rows, val_rows, plan, out=out, rank=rank, world=world,
                      is_encoder_decoder=spec.is_encoder_decoder, training_args=training_args)
    return trainer.train(resume_dir)


def main(argv: Optional[list[str]] = None) -> int:
    parser = HfArgumentParser(ARG_CLASSES, description=__doc__.split("\n")[0])
    dargs, margs, targs, pargs = parser.parse_args_into_dataclasses(args=argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        summary = run(dargs, margs, targs, pargs)
    except MpcgenError as exc:
        logger.error("%s", exc)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
