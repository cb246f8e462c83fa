"""mpcgen.train's pieces: the lr schedule (same values as the formula runs so far used), the weight-decay rule shared
with distillation, the family registry, and resuming from a resume state written before the schedule moved to
transformers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.models.config import FAMILIES
from mpcgen.train import SPECS, family_spec, lr_factor, scheduler, weight_decay_groups
from mpcgen.train.schedule import capped_warmup


def old_lr_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """The schedule as mpcgen/training.py computed it before it moved onto transformers' schedules."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
@pytest.mark.parametrize("warmup,total", [(0, 50), (1, 1), (1, 7), (2, 10), (200, 1000), (200, 37), (100, 10**9)])
def test_schedule_matches_the_old_formula_exactly(kind, warmup, total):
    warmup = capped_warmup(warmup, total)
    steps = sorted({0, 1, warmup - 1, warmup, warmup + 1, total // 3, total // 2, total - 1, total, total + 5}
                   - {-1})
    for step in steps:
        assert lr_factor(step, warmup=warmup, total=total, kind=kind) == old_lr_factor(
            step, warmup=warmup, total=total, kind=kind), step  # bit for bit: resumed runs must not drift


def test_warmup_cap_and_unknown_schedule():
    assert capped_warmup(200, 1000) == 100 and capped_warmup(200, 5) == 1 and capped_warmup(3, 10**9) == 3
    with pytest.raises(MpcgenError, match=r"unknown --schedule 'step'; choose one of \['constant', 'cosine'"):
        lr_factor(0, warmup=0, total=10, kind="step")


def test_scheduler_sets_each_groups_lr_from_the_start_step_and_follows_a_changing_total():
    a, b = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr_scale": 0.1}], lr=1e-3)
    total = {"steps": 100}

    def lr_at(step: int) -> float:
        return 1e-3 * lr_factor(step, warmup=5, total=total["steps"], kind="cosine")

    sched = scheduler(opt, lr_at, step=40)  # a resumed run at step 40
    assert [g["lr"] for g in opt.param_groups] == [lr_at(40), lr_at(40) * 0.1]
    opt.step()
    total["steps"] = 60  # a time budget re-fits the run
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [lr_at(41), lr_at(41) * 0.1]
    assert opt.param_groups[0]["lr"] == 1e-3 * old_lr_factor(41, warmup=5, total=60, kind="cosine")


def test_trainer_and_distillation_share_the_weight_decay_rule():
    from mpcgen.distill import param_groups

    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    ours = weight_decay_groups(params, 0.01)
    assert [len(g["params"]) for g in ours] == [2, 3] and [g["weight_decay"] for g in ours] == [0.01, 0.0]
    assert ours[0]["params"][0] is model[0].weight and ours[1]["params"][0] is model[0].bias
    distilled = param_groups(model, 0.01, reciprocal_lr_scale=0.0)
    assert [[id(p) for p in g["params"]] for g in distilled] == [[id(p) for p in g["params"]] for g in ours]


def test_one_list_of_families():
    assert set(SPECS) == set(FAMILIES)
    for name in FAMILIES:
        assert family_spec(name).is_encoder_decoder == (FAMILIES[name] == "encoder-decoder")
    with pytest.raises(MpcgenError, match=r"choose one of \['bart', 'gpt2', 't5'\]"):
        family_spec("llama")


def test_resume_from_a_state_without_scheduler_fields(capsys, tmp_path):
    """Resume states written before the LambdaLR (no ``initial_lr`` in the optimizer groups) resume with the lrs
    the old loop would have used."""
    from nlg.finetune import main

    args = ["--task", "e2e", "--model", "gpt2", "--init", "scratch", "--size", "tiny", "--limit-train", "32",
            "--limit-val", "16", "--batch-size", "8", "--warmup-steps", "2", "--vocab-size", "512",
            "--num-threads", "1", "--schedule", "linear", "--lr", "1e-3", "--eval-every", "2", "--out", str(tmp_path)]
    assert main([*args, "--max-steps", "4"]) == 0
    state_path = tmp_path / "resume" / "state.json"
    state = json.loads(state_path.read_text())
    for group in state["optimizer"]["param_groups"]:
        group.pop("initial_lr")
    state_path.write_text(json.dumps(state))
    assert main([*args, "--max-steps", "7"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["start_step"] == 4 and summary["step"] == 7
    saved = json.loads(state_path.read_text())["optimizer"]["param_groups"]
    # The groups hold the lr of the last step taken (step 6 of 0..6) under the resumed run's total of 7.
    expected = 1e-3 * old_lr_factor(6, warmup=capped_warmup(2, 7), total=7, kind="linear")
    assert [g["lr"] for g in saved] == [expected, expected]
    history = json.loads((tmp_path / "trainer_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [2, 4, 6, 7]


def test_time_budget_refits_when_the_machine_slows_down(capsys, tmp_path, monkeypatch):
    """--max-minutes under a clock whose steps get 3x slower after the first fit: the budget is re-fitted at every
    evaluation, so the schedule still decays to (nearly) 0 by the deadline instead of being cut mid-way."""
    import types

    from mpcgen.train import loop
    from nlg.finetune import main

    class Clock:  # simulated seconds: each reading of the clock advances it (about one reading per step)
        t, calls = 0.0, 0

        def monotonic(self) -> float:
            self.calls += 1
            self.t += 0.5 if self.calls < 40 else 1.5
            return self.t

    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=Clock().monotonic))
    args = ["--task", "e2e", "--model", "gpt2", "--init", "scratch", "--size", "tiny", "--limit-train", "64",
            "--limit-val", "8", "--batch-size", "4", "--warmup-steps", "2", "--vocab-size", "512",
            "--num-threads", "1", "--lr", "1e-3", "--eval-every", "10", "--max-minutes", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    history = json.loads((tmp_path / "trainer_state.json").read_text())["history"]
    assert history[-1]["elapsed_s"] <= 60.0 + 3.0  # at most one step late
    # The last evaluation before the stop is near the cosine's end (fitted once: lr 4.5e-4 there, 7 steps before
    # the deadline cut the run).
    assert history[-2]["lr"] < 0.1 * 1e-3 and history[-1]["step"] - history[-2]["step"] <= 5, history


def test_length_grouped_batches_are_a_permutation_with_little_padding():
    from mpcgen.train.data import length_grouped

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 200, (1000,), generator=gen).tolist()
    shuffled = torch.randperm(1000, generator=gen).tolist()
    grouped = length_grouped(shuffled, lengths, 32, seed=1, megabatch=10)
    assert sorted(grouped) == list(range(1000))
    assert grouped[-(1000 % 32):] == sorted(grouped[-(1000 % 32):], key=lambda i: -lengths[i])  # the short batch last

    def padding(order: list[int]) -> float:
        batches = [order[i : i + 32] for i in range(0, len(order), 32)]
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - sum(lengths) / padded

    assert padding(shuffled) > 0.4 and padding(grouped) < 0.15  # uniform 5-200: sorted runs of 320
    assert length_grouped(shuffled, lengths, 32, seed=1, megabatch=10) == grouped
    assert length_grouped(shuffled, lengths, 32, seed=2, megabatch=10) != grouped  # another epoch, another order
    with pytest.raises(MpcgenError, match="positive"):
        length_grouped(shuffled, lengths, 0, seed=1)


def test_grouped_batches_resume_mid_epoch_where_they_stopped():
    """The loop's batch k of an epoch is the same whether the run started at 0 or resumed at k (also across the epoch
    boundary, whose grouping is seeded by the epoch)."""
    import itertools
    import types

    from mpcgen.train.loop import Trainer, TrainPlan

    rows = [{"input_ids": [1] * n, "labels": [2] * n} for n in (3, 9, 4, 17, 6, 1, 12, 8, 2, 5, 15, 7, 11, 10)]
    plan = TrainPlan(total_steps=None, max_minutes=None, lr=1e-3, warmup=0, schedule="constant", weight_decay=0.0,
                     batch_size=4, eval_every=100, max_grad_norm=1.0, seed=3, group_by_length=True)

    def trainer(batch_in_epoch: int) -> Trainer:
        t = Trainer(None, types.SimpleNamespace(pad_token_id=0), rows, rows[:2], plan, out=Path("unused"), rank=0,
                    world=1, is_encoder_decoder=False, training_args={})
        t.state["batch_in_epoch"] = batch_in_epoch
        return t

    whole = [b["input_ids"].tolist() for b in itertools.islice(trainer(0)._batches(None), 10)]
    resumed = [b["input_ids"].tolist() for b in itertools.islice(trainer(2)._batches(None), 8)]
    assert resumed == whole[2:]
    # One megabatch: the lengths sorted and cut into 4s; the full batches in a seeded order, the short one last.
    lengths = [[sum(1 for t in row if t) for row in b] for b in whole[:4]]
    assert sorted(lengths[:3]) == [[6, 5, 4, 3], [10, 9, 8, 7], [17, 15, 12, 11]] and lengths[3] == [2, 1]
