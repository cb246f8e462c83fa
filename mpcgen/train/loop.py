"""The training loop shared by the stages: AdamW, warmup + decay fitted to a step or time budget, optional DP-SGD
(Opacus) and DDP, validation loss, best-checkpoint keeping and resumable state. Only rank 0 logs, evaluates and saves.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from mpcgen import checkpoint as C
from mpcgen.errors import MpcgenError
from mpcgen.io import write_json
from mpcgen.train import schedule
from mpcgen.train.data import Collator, length_grouped
from mpcgen.train.dp import DPPlan, PrivateTraining, epsilon_from_history, make_private
from mpcgen.train.families import export_hf_model, unwrap
from mpcgen.train.losses import per_sample_loss, sequence_loss, validation_loss
from mpcgen.train.optim import weight_decay_groups

logger = logging.getLogger(__name__)

# Steps timed (after a few warm-up steps) to fit the schedule to --max-minutes.
TIMING_STEPS = (5, 25)
EVAL_BATCH = 64


@dataclass
class TrainPlan:
    """Optimisation settings; ``total_steps=None`` means: fit to ``max_minutes``."""

    total_steps: Optional[int]
    max_minutes: Optional[float]
    lr: float
    warmup: int
    schedule: str
    weight_decay: float
    batch_size: int
    eval_every: int
    max_grad_norm: float
    seed: int
    dp: Optional[DPPlan] = None
    bf16: bool = False
    optimizer: str = "adamw"
    group_by_length: bool = False


@dataclass
class TrainHooks:
    """What a later stage (distillation) swaps into the loop; ``None`` keeps stage 1's behaviour.

    ``loss(model, batch)`` returns the training loss and named float components (logged to TensorBoard);
    ``val_loss(model, batches)`` the number the best checkpoint is chosen by; ``resume_config`` is written into
    ``resume/`` instead of the Hugging Face config (anything with ``save_pretrained(dir)``); ``param_groups(model,
    weight_decay)`` builds the optimizer's groups, each may carry ``lr_scale`` (a multiplier of the scheduled lr).
    """

    loss: Optional[Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]] = None
    val_loss: Optional[Callable[[torch.nn.Module, list], float]] = None
    resume_config: Any = None
    param_groups: Optional[Callable[[torch.nn.Module, float], list[dict]]] = None


OPTIMIZERS = ("adamw", "adafactor")


def make_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW, or Adafactor as T5 was trained: each update scaled by its weight's RMS (``scale_parameter``), so
    T5's small-initialised query weights (no 1/sqrt(d) on its attention scores) move relative to their size, at the
    schedule's ``lr`` (no relative step: the loop's warmup and decay apply)."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=True, relative_step=False, warmup_init=False)
    raise MpcgenError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")


class Trainer:
    """Train ``model`` on encoded rows; see :meth:`train`."""

    def __init__(self, model, tokenizer, train_rows, val_rows, plan: TrainPlan, *, out: Path, rank: int, world: int,
                 is_encoder_decoder: bool, training_args: dict[str, Any], hooks: Optional[TrainHooks] = None) -> None:
        self.model, self.tokenizer, self.plan, self.out = model, tokenizer, plan, Path(out)
        self.hooks = hooks or TrainHooks()
        self.train_rows, self.rank, self.world = train_rows, rank, world
        self.enc_dec, self.training_args = is_encoder_decoder, training_args
        self.collate = Collator(tokenizer.pad_token_id)
        # Validation batches sorted by length: less padding, faster.
        order = sorted(val_rows, key=lambda r: len(r["input_ids"]) + len(r["labels"]))
        self.val_batches = [self.collate(order[i : i + EVAL_BATCH]) for i in range(0, len(order), EVAL_BATCH)]
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val_loss": math.inf,
                                      "best_step": None, "history": [], "accountant_history": [],
                                      "total_steps": plan.total_steps}
        self.private: Optional[PrivateTraining] = None

    # -- setup --------------------------------------------------------------------------------------------------

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.hooks.param_groups is not None:
            groups = self.hooks.param_groups(self.model, self.plan.weight_decay)
        else:
            groups = weight_decay_groups([p for p in self.model.parameters() if p.requires_grad],
                                         self.plan.weight_decay)
        return make_optimizer(self.plan.optimizer, groups, self.plan.lr)

    def _wrap(self, optimizer):
        """DDP / DP-SGD wrapping; returns (optimizer, dp data loader or None)."""
        dp = self.plan.dp
        if dp is None:
            if self.world > 1:
                self.model = torch.nn.parallel.DistributedDataParallel(self.model)
            return optimizer, None
        if dp.clipping == "ghost" and self.hooks.loss is not None:
            raise MpcgenError("ghost clipping needs per-example losses; a custom training loss runs only with "
                              "--dp-clipping per-sample")
        # Per-rank loader of batch B * world over the full dataset: Opacus derives the sample rate 1/len(loader),
        # i.e. the global rate, and each rank Poisson-samples its shard at that rate.
        loader = DataLoader(self.train_rows, batch_size=self.plan.batch_size * self.world, collate_fn=self.collate)
        self.private = make_private(self.model, optimizer, loader, plan=dp, distributed=self.world > 1)
        self.model = self.private.model
        return self.private.optimizer, self.private.loader

    def _batches(self, dp_loader) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches; non-DP batches resume at (epoch, batch_in_epoch), DP batches are fresh Poisson samples."""
        while True:
            if dp_loader is not None:
                for batch in dp_loader:
                    self.state["batch_in_epoch"] += 1
                    yield batch
            else:
                sampler = DistributedSampler(self.train_rows, num_replicas=self.world, rank=self.rank, shuffle=True,
                                             seed=self.plan.seed)
                sampler.set_epoch(self.state["epoch"])
                idx = list(sampler)
                bs = self.plan.batch_size
                if self.plan.group_by_length:
                    lengths = [len(r["input_ids"]) + len(r["labels"]) for r in self.train_rows]
                    idx = length_grouped(idx, lengths, bs, seed=self.plan.seed * 100_003 + self.state["epoch"])
                for start in range(self.state["batch_in_epoch"] * bs, len(idx), bs):
                    self.state["batch_in_epoch"] += 1
                    yield self.collate([self.train_rows[i] for i in idx[start : start + bs]])
            self.state["epoch"] += 1
            self.state["batch_in_epoch"] = 0

    # -- state ----------------------------------------------------------------------------------------------------

    def _resume(self, resume_dir: Path, optimizer) -> None:
        model_state, opt_state, state = C.load_resume(resume_dir)
        unwrap(self.model).load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        for key in ("step", "epoch", "batch_in_epoch", "best_val_loss", "best_step", "history", "accountant_history"):
            self.state[key] = state[key]
        self.state["best_val_loss"] = self.state["best_val_loss"] if self.state["best_val_loss"] is not None else math.inf
        logger.info("resumed from %s at step %d (epoch %d)", resume_dir, self.state["step"], self.state["epoch"])

    def epsilon(self) -> Optional[float]:
        if self.plan.dp is None:
            return None
        return epsilon_from_history(self.plan.dp.accountant, self._accountant_history(), self.plan.dp.delta)

    def _accountant_history(self) -> list:
        if self.private is None:
            return self.state["accountant_history"]
        return [list(h) for h in self.private.accountant.history]

    def _trainer_state(self) -> dict[str, Any]:
        best = self.state["best_val_loss"]
        dp = self.plan.dp
        return {**{k: self.state[k] for k in ("step", "epoch", "best_step", "history", "total_steps")},
                "best_val_loss": best if math.isfinite(best) else None, "epsilon": self.epsilon(),
                "accountant": {"kind": dp.accountant, "delta": dp.delta, "history": self._accountant_history()}
                if dp else None}

    def _save_resume(self, optimizer) -> None:
        base = unwrap(self.model)
        state = {**self._trainer_state(), "batch_in_epoch": self.state["batch_in_epoch"],
                 "accountant_history": self._accountant_history(), "args": self.training_args}
        original = getattr(optimizer, "original_optimizer", optimizer)  # Opacus' DPOptimizer wraps it
        if self.hooks.resume_config is not None:
            config = self.hooks.resume_config
        else:
            config = base.get_base_model().config if hasattr(base, "get_base_model") else base.config
        C.save_resume(self.out, base.state_dict(), original, state, config=config, tokenizer=self.tokenizer)

    # -- loop -----------------------------------------------------------------------------------------------------

    def _evaluate_and_save(self, optimizer, train_loss: float, writer) -> None:
        """Rank 0: validation loss, best checkpoint, resume state, TensorBoard."""
        step = self.state["step"]
        if self.hooks.val_loss is not None:
            val = self.hooks.val_loss(unwrap(self.model), self.val_batches)
        else:
            val = validation_loss(unwrap(self.model), self.val_batches, is_encoder_decoder=self.enc_dec)
        eps = self.epsilon()
        self.state["history"].append({"step": step, "epoch": self.state["epoch"], "train_loss": train_loss,
                                      "val_loss": val, "lr": self._lr(step), "epsilon": eps,
                                      "elapsed_s": round(time.monotonic() - self.t0, 1)})
        writer.add_scalar("val/loss", val, step)
        if eps is not None:
            writer.add_scalar("dp/epsilon", eps, step)
        better = val < self.state["best_val_loss"]
        if better:
            self.state["best_val_loss"], self.state["best_step"] = val, step
            C.save_best(self.out, export_hf_model(self.model), self.tokenizer, training_args=self.training_args,
                        trainer_state=self._trainer_state())
        self._save_resume(optimizer)
        logger.info("step %d: train loss %.4f, val loss %.4f%s%s", step, train_loss, val,
                    " (best, saved)" if better else "", f", epsilon {eps:.3f}" if eps is not None else "")

    def _lr(self, step: int) -> float:
        """The learning rate at ``step`` under the current step budget (which a time budget may still change)."""
        total = self.state["total_steps"] or 10**9
        warmup = schedule.capped_warmup(self.plan.warmup, total)
        return self.plan.lr * schedule.lr_factor(step, warmup=warmup, total=total, kind=self.plan.schedule)

    def _fit_budget(self, step_s: float, eval_s: float) -> None:
        """Fit total_steps to --max-minutes from the measured step and evaluation times (same on every rank)."""
        left = self.plan.max_minutes * 60 - (time.monotonic() - self.t0)
        steps = left / step_s
        n_evals = steps / self.plan.eval_every + 1
        fitted = self.state["step"] + max(1, int((left - n_evals * eval_s) / step_s))
        if self.plan.total_steps is not None:
            fitted = min(fitted, self.plan.total_steps)
        if self.world > 1:
            t = torch.tensor([fitted])
            dist.broadcast(t, src=0)
            fitted = int(t)
        self.state["total_steps"] = fitted
        logger.info("time budget %.1f min: %.3f s/step, %.1f s/eval -> %d steps in total", self.plan.max_minutes,
                    step_s, eval_s, fitted)

    def train(self, resume_dir: Optional[Path] = None) -> dict[str, Any]:
        """Run to the step or time budget; return a summary (rank 0 has written the checkpoints)."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        optimizer = self._optimizer()
        if resume_dir is not None:
            self._resume(resume_dir, optimizer)
        optimizer, dp_loader = self._wrap(optimizer)
        if self.private is not None and self.state["accountant_history"]:
            # A resumed DP run continues the accountant, so it reports the same epsilon as before plus new steps.
            self.private.accountant.history = [tuple(h) for h in self.state["accountant_history"]]
        main = self.rank == 0
        writer = SummaryWriter(str(self.out / "runs")) if main else None
        self.t0 = time.monotonic()
        start = self.state["step"]
        if self.plan.max_minutes is not None and resume_dir is not None:
            self.state["total_steps"] = self.plan.total_steps  # re-fitted to this run's budget below
        self.model.train()
        bar = tqdm(total=self.state["total_steps"], initial=start, disable=not main, desc="train", dynamic_ncols=True)
        batches, running, timing, eval_s = self._batches(dp_loader), [], {}, 0.0
        mark = (self.t0, start)  # (time, step) after the last evaluation: the next re-fit's step time
        last_eval, first_loss = start, None
        lr_schedule = schedule.scheduler(optimizer, self._lr, step=start)
        while self.state["total_steps"] is None or self.state["step"] < self.state["total_steps"]:
            step = self.state["step"]
            if step > start:
                # Stepped here rather than after the optimizer: this step's lr follows the budget as re-fit so
                # far, and the state saved after the last step keeps that step's lr.
                lr_schedule.step()
            lr = self._lr(step)  # what the schedule set, before each group's lr_scale
            batch = next(batches)
            parts: dict[str, float] = {}
            if self.plan.dp is not None and batch["input_ids"].shape[0] == 0:
                self._empty_dp_step(optimizer)
                loss = torch.tensor(float("nan"))
            else:
                if self.private is not None and self.private.clipper is not None:  # (_wrap refuses a loss hook)
                    loss = self._ghost_backward(batch, step, writer)  # p.grad = sum of clipped per-example grads
                else:
                    # bf16 autocast roughly halves step time on CPUs with AVX512-BF16/AMX; the loss stays float32.
                    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=self.plan.bf16):
                        if self.hooks.loss is not None:
                            loss, parts = self.hooks.loss(self.model, batch)
                        else:
                            loss, _ = sequence_loss(self.model, batch, is_encoder_decoder=self.enc_dec,
                                                    per_sample=self.plan.dp is not None)
                    if not torch.isfinite(loss.detach()).all():
                        self._stop_on_nan(step + 1, float(loss.detach()), parts, writer)
                    loss.backward()
                if self.plan.dp is None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.plan.max_grad_norm)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self.state["step"] = step = step + 1
            loss = loss.detach()
            running.append(float(loss))
            first_loss = first_loss if first_loss is not None else float(loss)
            if self.plan.max_minutes is not None and self._out_of_time(eval_s):
                logger.warning("--max-minutes %.1f reached at step %d: stopping", self.plan.max_minutes, step)
                self.state["total_steps"] = step
            bar.update(1)
            if main and step % 10 == 0:
                writer.add_scalar("train/loss", float(loss), step)
                writer.add_scalar("train/lr", lr, step)
                for name, value in parts.items():
                    writer.add_scalar(f"train/{name}", value, step)
                bar.set_postfix(loss=f"{float(loss):.3f}")
            if self.plan.max_minutes is not None:
                if step - start in TIMING_STEPS:
                    timing[step - start] = time.monotonic()
                if step - start == TIMING_STEPS[1]:
                    self._fit_budget((timing[TIMING_STEPS[1]] - timing[TIMING_STEPS[0]]) / (TIMING_STEPS[1] - TIMING_STEPS[0]), eval_s)
                    bar.total = self.state["total_steps"]
            if step % self.plan.eval_every == 0 and step < (self.state["total_steps"] or math.inf):
                t_eval = time.monotonic()
                if main:
                    self._evaluate_and_save(optimizer, _mean(running), writer)
                running, last_eval = [], step
                if self.world > 1:
                    dist.barrier()
                eval_s = time.monotonic() - t_eval
                if self.plan.max_minutes is not None:
                    # Re-fit at every evaluation from the step time since the previous one: a machine that gets
                    # busier (or quieter) mid-run still ends its schedule at the deadline, not cut mid-decay.
                    self._fit_budget((t_eval - mark[0]) / (step - mark[1]), eval_s)
                    bar.total = self.state["total_steps"]
                mark = (time.monotonic(), step)
        bar.close()
        if last_eval != self.state["step"] and main:
            self._evaluate_and_save(optimizer, _mean(running), writer)
        if main:
            write_json(self.out / "trainer_state.json", self._trainer_state())
            writer.close()
        if self.world > 1:
            dist.barrier()
        return {"out": str(self.out), "start_step": start, "step": self.state["step"],
                "best_val_loss": self._trainer_state()["best_val_loss"], "best_step": self.state["best_step"],
                "epsilon": self.epsilon(), "train_loss": self.state["history"][-1]["train_loss"] if main else None,
                "first_train_loss": first_loss, "elapsed_s": round(time.monotonic() - self.t0, 1)}

    def _stop_on_nan(self, step: int, loss: float, parts: dict[str, float], writer) -> None:
        """A non-finite loss: stop before it reaches the weights; the files on disk stay the last good ones."""
        if writer is not None:
            writer.close()
        best = self.state["best_step"]
        kept = (f"the best checkpoint (step {best}) in {self.out} and the resume state of the last evaluation are "
                "left as they were" if best is not None else f"no checkpoint was written to {self.out} yet")
        raise MpcgenError(f"training loss became {loss} at step {step} (components {parts}); stopped without "
                          f"applying it: {kept}. Lower --lr or the loss weights and resume.")

    def _out_of_time(self, eval_s: float) -> bool:
        """Whether the budget (minus one final evaluation) is spent; rank 0 decides for everyone."""
        flag = torch.tensor([float(time.monotonic() - self.t0 + eval_s > self.plan.max_minutes * 60)])
        if self.world > 1:
            dist.broadcast(flag, src=0)
        return bool(flag)

    def _ghost_backward(self, batch: dict[str, torch.Tensor], step: int, writer: Any) -> torch.Tensor:
        """DP-SGD with ghost clipping: the clipped per-example gradients of ``batch`` summed into ``p.grad``, one
        physical chunk (``DPPlan.physical_batch_size``) at a time; returns the batch's mean loss.

        The whole Poisson batch is one DP step (one noise draw, one accountant charge, in ``optimizer.step()``);
        chunks only bound the memory of a backward pass, and their clipped sums add up to the unchunked one."""
        size = batch["input_ids"].shape[0]
        chunk = self.plan.dp.physical_batch_size or size
        total = 0.0
        for lo in range(0, size, chunk):
            part = {k: v[lo:lo + chunk] for k, v in batch.items()}
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=self.plan.bf16):
                losses = per_sample_loss(self.model, part, is_encoder_decoder=self.enc_dec)
            if not torch.isfinite(losses.detach()).all():
                self._stop_on_nan(step + 1, float(losses.detach().mean()), {}, writer)
            self.private.clipper.backward(losses)
            total += float(losses.detach().sum())
        return torch.tensor(total / size)

    def _empty_dp_step(self, optimizer) -> None:
        """A Poisson batch with no examples: DP-SGD still takes a (pure-noise) step, and the accountant counts it."""
        for p in self.model.parameters():
            if p.requires_grad:
                if self.private.clipper is not None:
                    p.grad = torch.zeros_like(p)  # ghost: the (empty) clipped sum
                else:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        optimizer.step()


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")
