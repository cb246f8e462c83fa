"""Time one DP-SGD training step against one plain step: same model, batch, data and dtype.

    python -m benchmark.dp_step --model gpt2 --size small --batch-size 64 --steps 8 --num-threads 1

Builds the stage-1 scratch model (default GPT-2 small: 4 layers, d 256, a 4,096-token BPE vocabulary trained on
the E2E training texts, tied embeddings, max length 128), draws fixed batches of exactly ``--batch-size`` E2E
training examples (``--seq-len N`` uses random ids of length N instead of data), and times full optimizer steps of
each mode: ``non-dp`` (mean loss, backward, global norm clipping, AdamW: the loop's plain step), ``ghost`` and
``per-sample`` (the two ``--dp-clipping`` modes of ``nlg.finetune``: per-example clipping, Opacus' noise and AdamW).
Every mode sees the same batches; the modes take turns in rounds of ``--steps-per-round`` steps so that load from
other processes spreads over all of them. The first ``--warmup`` steps of each mode are not timed (the ghost mode's
first step also checks itself against autograd). Wall and process CPU time are both recorded: on a shared machine
the CPU time is the steadier figure. The forwards run in float32, or under bfloat16 autocast with ``--bf16`` as
``nlg.finetune --bf16`` runs them (ghost clipping then computes norms and the clipped sum in float32; the
``per-sample`` mode refuses it).

Logs go to stderr; the last stdout line is the record as JSON, also written (atomically) to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from mpcgen import train as T
from mpcgen.errors import MpcgenError
from mpcgen.io import write_json

logger = logging.getLogger("benchmark.dp_step")
MODES = ("non-dp", "ghost", "per-sample")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "dp_step.json"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gpt2", choices=sorted(T.SPECS), help="model family (default gpt2)")
    parser.add_argument("--size", default="small", help="scratch size preset (default small)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per step (default 64)")
    parser.add_argument("--max-length", type=int, default=128, help="max tokens per example (default 128)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary (default 4096)")
    parser.add_argument("--seq-len", type=int, default=None, help="random ids of this length instead of E2E data")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default $MPCGEN_DATA_DIR)")
    parser.add_argument("--limit-train", type=int, default=4000, help="E2E examples for tokenizer and batches")
    parser.add_argument("--modes", default="non-dp,ghost", help=f"comma-separated, of {list(MODES)}")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per mode (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first (default 2)")
    parser.add_argument("--steps-per-round", type=int, default=2, help="steps of one mode before the next's turn")
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--num-threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast forwards (not with per-sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="log the top operators of one step of each mode")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"record file (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        parser.error(f"unknown --modes {bad}; choose from {sorted(MODES)}")
    if args.bf16 and "per-sample" in args.modes:
        parser.error("--bf16 times non-dp and ghost only (Opacus' per-sample gradients are float32)")
    return args


def build_data(args: argparse.Namespace) -> tuple[Any, list[dict], list[dict[str, torch.Tensor]]]:
    """(tokenizer, encoded rows, batches): ``warmup + steps`` fixed batches of the rows, the same for every mode."""
    from mpcgen.data import canonical_task
    from mpcgen.tokenization import train_bpe_tokenizer

    examples, _, _ = T.load_splits(canonical_task("e2e"), args.data_dir, 5.0)
    examples = examples[: args.limit_train]
    tokenizer = train_bpe_tokenizer([t for ex in examples for t in (ex.source, ex.target)], args.vocab_size)
    spec = T.family_spec(args.model)
    gen = torch.Generator().manual_seed(args.seed)
    n = args.warmup + args.steps
    if args.seq_len is not None:
        ids = torch.randint(4, len(tokenizer), (max(args.limit_train, args.batch_size), args.seq_len), generator=gen)
        rows = [{"input_ids": r, "labels": r} for r in ids.tolist()]
    else:
        rows = T.encode_examples(tokenizer, examples, is_encoder_decoder=spec.is_encoder_decoder,
                                 max_length=args.max_length)
    if len(rows) < args.batch_size:
        raise MpcgenError(f"--limit-train {args.limit_train} gives {len(rows)} examples, fewer than --batch-size")
    collate = T.Collator(tokenizer.pad_token_id)
    picks = [torch.randperm(len(rows), generator=gen)[: args.batch_size].tolist() for _ in range(n)]
    return tokenizer, rows, [collate([rows[i] for i in idx]) for idx in picks]


def make_step(mode: str, args: argparse.Namespace, tokenizer: Any, rows: list[dict]) -> Callable[[dict], float]:
    """A fresh model (seeded) and optimizer; returns ``step(batch) -> loss``, one full optimizer step."""
    torch.manual_seed(args.seed)
    enc_dec = T.family_spec(args.model).is_encoder_decoder
    model = T.build_scratch_model(args.model, args.size, tokenizer, max_length=args.max_length).train()
    if mode != "non-dp":
        T.freeze_for_dp(model, args.model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(T.weight_decay_groups(params, 0.01), lr=1e-3)
    if mode == "non-dp":
        def step(batch: dict) -> float:
            with _autocast(args):
                loss, _ = T.sequence_loss(model, batch, is_encoder_decoder=enc_dec)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())
        return step
    # The DP optimizer and accountant of training; the loader is built (it sets the sample rate) but the timed
    # steps take the fixed batches, so every mode sees the same data.
    plan = T.DPPlan(target_epsilon=8.0, delta=1e-5, max_grad_norm=args.max_grad_norm,
                    sample_rate=args.batch_size / len(rows), steps=args.steps, noise_multiplier=args.noise_multiplier,
                    accountant="rdp", clipping=mode)
    collate = T.Collator(tokenizer.pad_token_id)
    loader = torch.utils.data.DataLoader(rows, batch_size=args.batch_size, collate_fn=collate)
    private = T.make_private(model, optimizer, loader, plan=plan, distributed=False)
    dp_model, dp_optimizer = private.model, private.optimizer

    def dp_step(batch: dict) -> float:
        if private.clipper is not None:
            with _autocast(args):
                losses = T.per_sample_loss(dp_model, batch, is_encoder_decoder=enc_dec)
            private.clipper.backward(losses)
            loss = losses.mean()
        else:
            loss, _ = T.sequence_loss(dp_model, batch, is_encoder_decoder=enc_dec, per_sample=True)
            loss.backward()
        dp_optimizer.step()
        dp_optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())
    return dp_step


def _autocast(args: argparse.Namespace) -> torch.autocast:
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=args.bf16)


def profile_step(mode: str, step: Callable[[dict], float], batch: dict) -> None:
    """Log the operators that take the most CPU time in one step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batch)
    logger.info("profile of one %s step:\n%s", mode, prof.key_averages().table(sort_by="self_cpu_time_total",
                                                                             row_limit=15))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Time every mode on the same batches; return the record."""
    torch.set_num_threads(args.num_threads)
    tokenizer, rows, batches = build_data(args)
    steps = {m: make_step(m, args, tokenizer, rows) for m in args.modes}
    wall: dict[str, list[float]] = {m: [] for m in args.modes}
    cpu: dict[str, list[float]] = {m: [] for m in args.modes}
    done = {m: 0 for m in args.modes}
    total = args.warmup + args.steps
    while any(done[m] < total for m in args.modes):
        for mode in args.modes:
            for _ in range(min(args.steps_per_round, total - done[mode])):
                batch = batches[done[mode]]
                t0, c0 = time.perf_counter(), time.process_time()
                loss = steps[mode](batch)
                t1, c1 = time.perf_counter(), time.process_time()
                if done[mode] >= args.warmup:
                    wall[mode].append(t1 - t0)
                    cpu[mode].append(c1 - c0)
                logger.info("%s step %d: %.3f s wall, %.3f s cpu, loss %.3f", mode, done[mode] + 1, t1 - t0,
                            c1 - c0, loss)
                done[mode] += 1
    if args.profile:
        for mode in args.modes:
            profile_step(mode, steps[mode], batches[-1])
    from benchmark.harness import git_commit, host_info

    summary = {m: {"mean_s": statistics.mean(wall[m]), "median_s": statistics.median(wall[m]),
                   "cpu_mean_s": statistics.mean(cpu[m]), "cpu_median_s": statistics.median(cpu[m]),
                   "wall_s": [round(x, 4) for x in wall[m]], "cpu_s": [round(x, 4) for x in cpu[m]]}
               for m in args.modes}
    ratios = {}
    if "non-dp" in summary:
        base = summary["non-dp"]
        for m in args.modes:
            if m != "non-dp":
                ratios[m] = {"mean": summary[m]["mean_s"] / base["mean_s"],
                             "median": summary[m]["median_s"] / base["median_s"],
                             "cpu_mean": summary[m]["cpu_mean_s"] / base["cpu_mean_s"]}
    lengths = [int(b["input_ids"].shape[1]) for b in batches]
    return {"benchmark": "dp_step", "model": args.model, "size": args.size, "batch_size": args.batch_size,
            "dtype": "bf16 autocast" if args.bf16 else "float32", "vocab": len(tokenizer), "max_length": args.max_length,
            "data": "random" if args.seq_len else "e2e", "padded_lengths": lengths,
            "mean_padded_length": statistics.mean(lengths), "threads": args.num_threads, "steps": args.steps,
            "warmup": args.warmup, "noise_multiplier": args.noise_multiplier, "max_grad_norm": args.max_grad_norm,
            "modes": summary, "ratio_to_non_dp": ratios, **git_commit(), "host": host_info()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        record = measure(args)
    except MpcgenError as exc:
        logger.error("%s", exc)
        return 2
    for mode, ratio in record["ratio_to_non_dp"].items():
        logger.info("%s / non-dp: %.2fx wall (mean), %.2fx wall (median), %.2fx cpu (mean)", mode, ratio["mean"],
                    ratio["median"], ratio["cpu_mean"])
    os.makedirs(args.json.parent, exist_ok=True)
    write_json(args.json, record)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
