"""Stage 1 fine-tuning on tiny scratch models: loss goes down, checkpoints round-trip, resume, DP accounting, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from mpcgen import train as T
from mpcgen.errors import MpcgenError
from nlg.finetune import load_splits, main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--task", "e2e", "--init", "scratch", "--size", "tiny", "--limit-train", "64", "--limit-val", "32",
        "--batch-size", "8", "--warmup-steps", "2", "--vocab-size", "512", "--num-threads", "2"]


def finetune(capsys, out: Path, *extra: str) -> dict:
    assert main([*TINY, "--out", str(out), *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["gpt2", "t5", "bart"])
def test_tiny_finetune_lowers_loss(capsys, tmp_path, model):
    summary = finetune(capsys, tmp_path, "--model", model, "--max-steps", "30", "--eval-every", "15", "--lr", "3e-3")
    assert summary["step"] == 30
    assert summary["train_loss"] < summary["first_train_loss"] - 0.5
    args = json.loads((tmp_path / "training_args.json").read_text())
    assert args["task"] == "e2e_nlg" and args["model"] == model and args["train_split"] == "train"
    assert args["is_encoder_decoder"] == (model != "gpt2") and args["frozen_parameters"] == []


def test_scratch_bart_encoder_keeps_its_sources_apart(capsys, tmp_path):
    """Scratch BART scales its token embeddings: without it, 60 steps at lr 1e-3 encode every source alike (spread
    0.015, against 0.41 with it; measured), the collapse after which the E2E BART decoder never read its input."""
    finetune(capsys, tmp_path, "--model", "bart", "--limit-train", "2000", "--batch-size", "16", "--warmup-steps",
             "20", "--max-steps", "60", "--eval-every", "60", "--lr", "1e-3", "--num-threads", "1")
    assert _encoder_spread(tmp_path) > 0.1


def _encoder_spread(ckpt: Path) -> float:
    """How much the saved encoder's output depends on its source: the mean distance between two sources' outputs
    at the same positions, relative to their norm. A scratch BART without scaled token embeddings drives this to
    ~0.01 within a few dozen steps (every source encoded alike: the decoder then never learns to read it)."""
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    a, b = (tok(s, return_tensors="pt").input_ids for s in (
        "name[The Eagle], eatType[coffee shop], food[French], area[riverside]",
        "name[Blue Spice], eatType[pub], food[Chinese], priceRange[high], area[city centre]"))
    with torch.no_grad():
        ha, hb = (model.get_encoder()(input_ids=x).last_hidden_state[0] for x in (a, b))
    n = min(len(ha), len(hb))
    return float(((ha[:n] - hb[:n]).norm(dim=-1) / ha[:n].norm(dim=-1)).mean())


def test_checkpoint_round_trip_and_resume(capsys, tmp_path):
    first = finetune(capsys, tmp_path, "--model", "gpt2", "--max-steps", "10", "--eval-every", "5")
    assert first["start_step"] == 0 and first["step"] == 10
    state = json.loads((tmp_path / "resume" / "state.json").read_text())
    assert state["step"] == 10
    # The top level is a plain HF model: reloading gives the logits of the weights it was saved from.
    best_step = json.loads((tmp_path / "trainer_state.json").read_text())["best_step"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = torch.tensor([tok.encode("name[The Eagle], food[English]")])
    if best_step == 10:
        ref = T.build_scratch_model("gpt2", "tiny", tok, max_length=128).eval()
        ref.load_state_dict(load_file(str(tmp_path / "resume" / "model.safetensors")))
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)
    # Resume: continues at step 10 with the saved optimizer state.
    second = finetune(capsys, tmp_path, "--model", "gpt2", "--max-steps", "16", "--eval-every", "5")
    assert second["start_step"] == 10 and second["step"] == 16
    opt = load_file(str(tmp_path / "resume" / "optimizer.safetensors"))
    assert all(int(v) == 16 for k, v in opt.items() if k.endswith(".step"))
    history = json.loads((tmp_path / "trainer_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [5, 10, 15, 16]
    # Different settings on the same folder are refused instead of silently mixed.
    assert main([*TINY, "--out", str(tmp_path), "--model", "gpt2", "--max-steps", "20", "--dp"]) == 2


def test_adafactor_trains_resumes_and_is_not_mixed_with_adamw(capsys, tmp_path):
    first = finetune(capsys, tmp_path, "--model", "t5", "--optim", "adafactor", "--lr", "1e-2", "--max-steps", "6",
                     "--eval-every", "3")
    opt = load_file(str(tmp_path / "resume" / "optimizer.safetensors"))
    assert any(k.endswith("exp_avg_sq_row") for k in opt)  # Adafactor's factored second moments, not AdamW's
    history = json.loads((tmp_path / "trainer_state.json").read_text())["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    second = finetune(capsys, tmp_path, "--model", "t5", "--optim", "adafactor", "--lr", "1e-2", "--max-steps", "8",
                      "--eval-every", "3")
    assert (first["step"], second["start_step"], second["step"]) == (6, 6, 8)
    assert main([*TINY, "--out", str(tmp_path), "--model", "t5", "--max-steps", "10"]) == 2  # AdamW on its state
    assert main([*TINY, "--out", str(tmp_path / "x"), "--model", "t5", "--optim", "sgd"]) == 2
    # A state written before --optim existed was AdamW's: it resumes under the default.
    adamw = tmp_path / "adamw"
    finetune(capsys, adamw, "--model", "gpt2", "--max-steps", "2", "--eval-every", "2")
    state = json.loads((adamw / "resume" / "state.json").read_text())
    del state["args"]["optim"]
    (adamw / "resume" / "state.json").write_text(json.dumps(state))
    assert finetune(capsys, adamw, "--model", "gpt2", "--max-steps", "3", "--eval-every", "2")["start_step"] == 2


def test_a_pairs_file_replaces_the_task_data(capsys, tmp_path):
    """--train-file (public pre-training): training and validation come from the file, the tokenizer is learnt on
    it, and --task names the format only."""
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"source": f"name[Venue {i}], food[French]", "target": f"Venue {i} serves zorblax French food."}
            for i in range(40)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m"
    summary = finetune(capsys, out, "--model", "gpt2", "--max-steps", "2", "--eval-every", "2", "--train-file",
                       str(pairs), "--holdout-percent", "25")
    args = json.loads((out / "training_args.json").read_text())
    train, val = T.load_pairs_file(pairs, 25)
    assert args["train_split"] == "train_file" and (args["n_train"], args["n_val"]) == (len(train), len(val))
    assert summary["step"] == 2
    assert "zorblax" in AutoTokenizer.from_pretrained(out).get_vocab() or "Ġzorblax" in AutoTokenizer.from_pretrained(
        out).get_vocab()
    assert main([*TINY, "--out", str(tmp_path / "two"), "--task", "e2e+webnlg", "--train-file", str(pairs)]) == 2
    assert not (tmp_path / "two" / "model.safetensors").exists()


def test_dp_finetune_reports_recomputable_epsilon(capsys, tmp_path):
    summary = finetune(capsys, tmp_path, "--model", "gpt2", "--max-steps", "8", "--eval-every", "4", "--dp",
                       "--target-epsilon", "5")
    eps = summary["epsilon"]
    assert eps is not None and 0 < eps <= 5.0 + 1e-6
    args = json.loads((tmp_path / "training_args.json").read_text())
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    dp = args["dp"]
    assert args["frozen_parameters"] == ["transformer.wpe.weight"]
    assert state["accountant"]["history"] == [[dp["noise_multiplier"], dp["sample_rate"], 8]]
    recomputed = T.epsilon_from_history("rdp", [(dp["noise_multiplier"], dp["sample_rate"], 8)], dp["delta"])
    assert state["epsilon"] == pytest.approx(recomputed) == pytest.approx(eps)


def test_lora_finetune_saves_a_plain_merged_model(capsys, tmp_path):
    summary = finetune(capsys, tmp_path, "--model", "gpt2", "--lora", "--max-steps", "6", "--eval-every", "3",
                       "--lr", "3e-3")
    assert summary["step"] == 6
    args = json.loads((tmp_path / "training_args.json").read_text())
    assert args["lora"] is True and args["n_trainable_parameters"] < args["n_parameters"] / 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path)  # LoRA merged: loads as a plain GPT-2, no adapter keys
    assert not [n for n, _ in model.named_parameters() if "lora" in n]


def test_impossible_epsilon_is_a_user_error(capsys, tmp_path):
    with pytest.raises(MpcgenError, match="target-epsilon"):
        T.plan_noise(target_epsilon=0.01, delta=1e-5, sample_rate=0.5, steps=1000, accountant="rdp")
    code = main([*TINY, "--out", str(tmp_path), "--model", "gpt2", "--max-steps", "1000", "--dp",
                 "--target-epsilon", "0.01"])
    assert code == 2 and not (tmp_path / "resume").exists()


def test_bad_names_are_user_errors(caplog, tmp_path):
    assert main([*TINY, "--out", str(tmp_path), "--model", "gpt3"]) == 2
    assert "['bart', 'gpt2', 't5']" in caplog.text
    assert main([*TINY, "--out", str(tmp_path), "--task", "nope"]) == 2
    assert main([*TINY, "--out", str(tmp_path), "--dp", "--group-by-length"]) == 2
    assert "Poisson sample" in caplog.text and not (tmp_path / "resume").exists()


def test_multiwoz_trains_on_validation_with_disjoint_holdout(data_dir):
    train, val, split = load_splits("multiwoz_nlg", str(data_dir), 5.0)
    assert split == "validation" and val and len(val) < 0.1 * len(train)
    assert not {ex.source for ex in train} & {ex.source for ex in val}


@pytest.mark.parametrize("extra", [[], ["--dp"]], ids=["plain", "dp"])
def test_torchrun_two_processes(tmp_path, extra):
    out = tmp_path / "ddp"
    cmd = [str(REPO / ".venv" / "bin" / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m",
           "nlg.finetune", *TINY, "--num-threads", "1", "--model", "gpt2", "--max-steps", "6", "--eval-every", "3",
           "--out", str(out), *extra]
    # A new session, so that a timeout can kill torchrun's workers too instead of leaving them orphaned.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish within 300 s")
    assert proc.returncode == 0, stderr[-3000:]
    summaries = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["step"] == 6  # only rank 0 reports
    assert (json.loads(summaries[0])["epsilon"] is not None) == bool(extra)  # DP: saved through Opacus DDP
    args = json.loads((out / "training_args.json").read_text())
    assert args["world_size"] == 2 and args["global_batch_size"] == 16
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no stray temp files


def test_recipe_table_commands_parse():
    """``scripts/finetune.sh --table`` covers the nine cells, and every command it would run parses (a recipe typo
    fails here, not an hour into a run)."""
    import shlex

    from transformers import HfArgumentParser

    from nlg.finetune import ARG_CLASSES

    res = subprocess.run(["bash", str(REPO / "scripts" / "finetune.sh"), "--table", "--dry-run"], capture_output=True,
                         text=True, check=True, cwd=REPO)
    commands = [shlex.split(line[2:]) for line in res.stderr.splitlines() if line.startswith("+ ")]
    train = [c for c in commands if c[1:3] == ["-m", "nlg.finetune"]]
    evals = [c for c in commands if c[1:3] == ["-m", "nlg.evaluate"]]
    cells = {(c[c.index("--task") + 1], c[c.index("--model") + 1]) for c in train}
    assert cells == {(t, m) for t in ("e2e", "webnlg", "multiwoz") for m in ("gpt2", "t5", "bart")}
    assert len(evals) == 9 and len(train) == 9  # one leg each today (E2E T5 had two before --delex e2e)
    for c in train:
        HfArgumentParser(ARG_CLASSES).parse_args_into_dataclasses(args=c[3:])
    res = subprocess.run(["bash", str(REPO / "scripts" / "finetune.sh"), "--table", "--dry-run", "--only", "e2e-x"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "unknown cell 'e2e-x'" in res.stderr


def test_freeze_keeps_the_named_parameters_fixed_under_dp(capsys, tmp_path):
    """``--freeze wte`` with DP-SGD: GPT-2's (tied) token embeddings stay exactly as initialised while the rest
    trains, the accountant still runs, and a pattern that matches nothing is refused."""
    summary = finetune(capsys, tmp_path, "--model", "gpt2", "--max-steps", "4", "--eval-every", "4", "--dp",
                       "--freeze", "wte", "--lr", "1e-2")
    assert summary["epsilon"] is not None
    args = json.loads((tmp_path / "training_args.json").read_text())
    assert args["frozen_parameters"] == ["transformer.wpe.weight", "transformer.wte.weight"]  # DP's, then ours
    tok = AutoTokenizer.from_pretrained(tmp_path)
    torch.manual_seed(0)  # nlg.finetune's seed: the same initial weights
    init = T.build_scratch_model("gpt2", "tiny", tok, max_length=128).state_dict()
    trained = load_file(str(tmp_path / "resume" / "model.safetensors"))
    assert torch.equal(trained["transformer.wte.weight"], init["transformer.wte.weight"])
    assert not torch.equal(trained["transformer.h.0.attn.c_attn.weight"], init["transformer.h.0.attn.c_attn.weight"])
    assert main([*TINY, "--out", str(tmp_path / "typo"), "--model", "gpt2", "--max-steps", "2", "--freeze", "wtf"]) == 2


def test_dp_physical_batch_size_runs_and_is_recorded(capsys, tmp_path):
    """The flag reaches the DP plan (its arithmetic: tests/test_dp.py), the accountant charges the same steps, and
    it is refused without ghost-clipped DP."""
    dp = ["--model", "gpt2", "--max-steps", "3", "--eval-every", "3", "--dp", "--target-epsilon", "8",
          "--batch-size", "16", "--num-threads", "1"]
    whole = finetune(capsys, tmp_path / "whole", *dp)
    chunked = finetune(capsys, tmp_path / "chunked", *dp, "--dp-physical-batch-size", "3")
    assert chunked["epsilon"] == pytest.approx(whole["epsilon"])
    args = json.loads((tmp_path / "chunked" / "training_args.json").read_text())
    assert args["dp"]["physical_batch_size"] == 3 and args["global_batch_size"] == 16
    # bf16 forwards with ghost clipping (its arithmetic: tests/test_dp.py); Opacus' per-sample mode refuses them.
    bf16 = finetune(capsys, tmp_path / "bf16", *dp, "--dp-physical-batch-size", "3", "--bf16")
    assert bf16["epsilon"] == pytest.approx(whole["epsilon"]) and math.isfinite(bf16["train_loss"])
    for extra in (["--dp-physical-batch-size", "4"], ["--dp", "--dp-clipping", "per-sample",
                                                      "--dp-physical-batch-size", "4"],
                  ["--dp", "--dp-physical-batch-size", "0"], ["--dp", "--dp-clipping", "per-sample", "--bf16"]):
        assert main([*TINY, "--out", str(tmp_path / "bad"), "--model", "gpt2", "--max-steps", "2", *extra]) == 2
