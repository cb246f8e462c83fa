"""Stage 2 on a tiny random teacher: every preset distils and its objective falls, ER decoding equals the model's own
step-by-step forward, students reload bit-exactly and resume, bad input gives clear errors, nlg.evaluate scores a
student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from distill.run import main
from mpcgen import distill as D
from mpcgen.data import load_examples
from mpcgen.errors import MpcgenError
from mpcgen.student_decoding import greedy_student
from mpcgen.tokenization import train_bpe_tokenizer
from nlg import evaluate

FAST = ["--limit-train", "32", "--limit-val", "16", "--batch-size", "8", "--warmup-steps", "1", "--lr", "1e-3",
        "--num-threads", "2", "--teacher-init-examples", "16"]


def save_teacher(path: Path, hf_model, tokenizer, task: str = "e2e_nlg") -> Path:
    """A stage-1 checkpoint layout: HF model + tokenizer + training_args.json."""
    hf_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "training_args.json").write_text(json.dumps({"task": task, "model": "gpt2", "max_length": 64}))
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data_dir) -> Path:
    """A tiny random GPT-2 (d 32, 2 layers, 128 positions; trained on 64) with a BPE tokenizer trained on E2E text."""
    rows = load_examples("e2e", "train", data_dir)[:200]
    tok = train_bpe_tokenizer([t for ex in rows for t in (ex.source, ex.target)], vocab_size=320)
    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save_teacher(tmp_path_factory.mktemp("teacher"), tf.GPT2LMHeadModel(config).eval(), tok)


def distil(capsys, teacher: Path, out: Path, preset: str, *extra: str) -> dict:
    assert main(["--teacher", str(teacher), "--preset", preset, "--out", str(out), *FAST, *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("preset", ["merge", "mpcformer", "mpcformer-2relu", "thex", "merge-er-only",
                                    "merge-mm-only"])
def test_each_preset_distils_and_objective_falls(capsys, tmp_path, teacher, preset):
    summary = distil(capsys, teacher, tmp_path, preset, "--max-steps", "8", "--eval-every", "8")
    assert summary["step"] == 8 and summary["best_val_loss"] < summary["initial_val_loss"]
    args = json.loads((tmp_path / "training_args.json").read_text())
    assert args["preset"] == preset and args["teacher"] == str(teacher) and args["task"] == "e2e_nlg"
    assert set(args["loss"]) >= {"ce", "kl", "hidden", "er_lambda"}
    student = D.load_student(tmp_path, expect_preset=preset)
    assert student.config.preset == preset and student.tokenizer is not None


def test_er_rollout_equals_stepwise_forward(teacher):
    model = D.build_student(teacher, "merge", resend_norm="rmsnorm").eval()
    with torch.no_grad():
        for p in model.parameters():  # a non-trivial model: random constant attention and resend gain
            p.add_(torch.randn_like(p) * 0.05)
    prompt = torch.randint(5, model.config.vocab_size, (2, 7))
    tokens, states = greedy_student(model, prompt, max_new_tokens=6, eos_token_id=None)
    # Reference: no cache, the whole sequence re-run each step with inputs_embeds = prompt embeddings + resent states.
    embeds = model.wte(prompt)
    with torch.no_grad():
        for step in range(6):
            out = model(inputs_embeds=embeds, use_cache=False)
            h = out.hidden[:, -1:]
            assert torch.equal(out.logits[:, -1].argmax(-1), tokens[:, step])
            torch.testing.assert_close(h, states[:, step:step + 1], atol=1e-5, rtol=1e-4)
            embeds = torch.cat([embeds, model.resend_token(h)], dim=1)
    # Token re-embedding (the non-ER decoding) equals the same loop fed token ids.
    tokens, _ = greedy_student(model, prompt, max_new_tokens=4, eos_token_id=None, resend=False)
    ids = prompt
    with torch.no_grad():
        for step in range(4):
            nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1)
            assert torch.equal(nxt, tokens[:, step])
            ids = torch.cat([ids, nxt[:, None]], dim=1)


def test_per_layer_attention_and_teacher_constant_init(teacher):
    hf = tf.GPT2LMHeadModel.from_pretrained(teacher, attn_implementation="eager").eval()
    student = D.build_student(teacher, "merge", constant_layers="1", attention="2quad")
    assert student.config.attention_layers == ["2quad", "constant"] and student.config.preset == "merge"
    torch.testing.assert_close(student.stack.blocks[0].attn.q.weight, hf.transformer.h[0].attn.c_attn.weight[:, :32])
    ids = torch.randint(5, 300, (4, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    stats = D.teacher_statistics(hf, [batch])
    assert D.init_constant_attention(student, stats) == 1
    core = student.stack.blocks[1].attn.core
    # softmax over ALL columns, then the causal mask: observed rows reproduce the head-mean teacher attention.
    a = core.constant_weights(0, 10, 10, None)[0, 0]  # (T, S)
    ref = stats.attention[1].mean(0)[:10, :10]
    torch.testing.assert_close(torch.tril(a), ref, atol=1e-4, rtol=1e-3)
    assert float(a.detach().sum(-1).min()) > 0.999
    assert D.init_affine_norms(student, stats) == 5  # ln_1, ln_2 per layer and ln_f, calibrated


def test_student_reloads_bit_exactly_resumes_and_refuses_other_preset(capsys, tmp_path, teacher):
    first = distil(capsys, teacher, tmp_path, "merge", "--max-steps", "4", "--eval-every", "4")
    assert first["best_step"] == 4
    student = D.load_student(tmp_path, expect_preset="merge")
    saved = load_file(str(tmp_path / "resume" / "model.safetensors"))
    own = student.state_dict()
    assert saved.keys() == own.keys() and all(torch.equal(saved[k], own[k]) for k in own)
    with pytest.raises(MpcgenError, match="holds a 'merge' student, not 'mpcformer'"):
        D.load_student(tmp_path, expect_preset="mpcformer")
    second = distil(capsys, teacher, tmp_path, "merge", "--max-steps", "6", "--eval-every", "4")
    assert second["start_step"] == 4 and second["step"] == 6
    # Another preset on the same folder is refused instead of resumed.
    assert main(["--teacher", str(teacher), "--preset", "thex", "--out", str(tmp_path), *FAST,
                 "--max-steps", "8"]) == 2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(capsys, caplog, tmp_path, teacher, monkeypatch):
    calls = {"n": 0}
    real = D.Distiller.loss

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss, parts = real(self, model, batch)
        return (loss * float("nan"), parts) if calls["n"] == 6 else (loss, parts)

    monkeypatch.setattr(D.Distiller, "loss", poisoned)
    code = main(["--teacher", str(teacher), "--preset", "mpcformer", "--out", str(tmp_path), *FAST,
                 "--max-steps", "10", "--eval-every", "4"])
    assert code == 2
    assert "loss became nan at step 6" in caplog.text and "best checkpoint (step 4)" in caplog.text
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["best_step"] == 4
    student = D.load_student(tmp_path)
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_bad_teacher_and_flags_are_user_errors(capsys, tmp_path, teacher):
    t5 = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=99, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                                   num_heads=4, decoder_start_token_id=0))
    t5.save_pretrained(tmp_path / "t5")
    (tmp_path / "t5" / "training_args.json").write_text(json.dumps({"task": "e2e_nlg"}))
    with pytest.raises(MpcgenError, match="supports \\['gpt2'\\] teachers"):
        D.read_teacher(tmp_path / "t5")
    with pytest.raises(MpcgenError, match="only apply to ER presets"):
        D.loss_weights("mpcformer", er_lambda=0.5)
    with pytest.raises(MpcgenError, match="out of range"):
        D.build_student(teacher, "merge", constant_layers="5")
    assert main(["--teacher", str(teacher), "--preset", "nope", "--out", str(tmp_path / "x")]) == 2


def test_evaluate_cli_scores_a_student(capsys, tmp_path, teacher):
    distil(capsys, teacher, tmp_path, "merge", "--max-steps", "2", "--eval-every", "2")
    assert evaluate.checkpoint_kind(tmp_path) == "student"
    assert evaluate.main(["--ckpt", str(tmp_path), "--limit", "3", "--max-new-tokens", "8", "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["n"] == 3 and record["checkpoint_kind"] == "student" and 0.0 <= record["bleu"] <= 1.0
    assert len((tmp_path / "predictions-test.txt").read_text().splitlines()) == 3
    assert evaluate.main(["--ckpt", str(tmp_path), "--limit", "3", "--num-beams", "2"]) == 2
