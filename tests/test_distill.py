"""Stage 2 on tiny random teachers (GPT-2, T5, BART): every preset distils and its objective falls, ER and token
decoding equal the model's own step-by-step forward (and, for encoder-decoders, the private-generation loop),
students reload bit-exactly and resume, bad input gives clear errors, nlg.evaluate scores a student."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from distill.run import main
from mpcgen import distill as D
from mpcgen import train as T
from mpcgen.data import load_examples
from mpcgen.errors import MpcgenError
from mpcgen.generation.loop import decode
from mpcgen.tokenization import train_bpe_tokenizer
from nlg import evaluate

# One thread: tiny models gain nothing from a second one, and OpenMP's spinning threads slow down by orders of
# magnitude when the machine's cores are busy with other work.
FAST = ["--limit-train", "32", "--limit-val", "16", "--batch-size", "8", "--warmup-steps", "1", "--lr", "1e-3",
        "--num-threads", "1", "--teacher-init-examples", "16"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def save_teacher(path: Path, hf_model, tokenizer, task: str = "e2e_nlg", model: str = "gpt2") -> Path:
    """A stage-1 checkpoint layout: HF model + tokenizer + training_args.json."""
    hf_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "training_args.json").write_text(json.dumps({"task": task, "model": model, "max_length": 64}))
    return path


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    """A BPE tokenizer trained on E2E text."""
    rows = load_examples("e2e", "train", data_dir)[:200]
    return train_bpe_tokenizer([t for ex in rows for t in (ex.source, ex.target)], vocab_size=320)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer) -> Path:
    """A tiny random GPT-2 (d 32, 2 layers, 128 positions; trained on 64)."""
    tok = tokenizer
    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save_teacher(tmp_path_factory.mktemp("teacher"), tf.GPT2LMHeadModel(config).eval(), tok)


@pytest.fixture(scope="module")
def encdec_teachers(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Tiny random T5 (relu, relative positions; starts decoding from pad) and BART (learned positions, post-norm;
    starts from bos) teachers, d 32, 2 + 2 layers, 4 heads, as stage 1 builds them from scratch."""
    tok = tokenizer
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    t5 = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                   num_heads=4, decoder_start_token_id=tok.pad_token_id, **ids))
    bart = tf.BartForConditionalGeneration(tf.BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        decoder_start_token_id=tok.bos_token_id, forced_eos_token_id=tok.eos_token_id, **ids))
    return {name: save_teacher(tmp_path_factory.mktemp(name), model.eval(), tok, model=name)
            for name, model in (("t5", t5), ("bart", bart))}


def distil(capsys, teacher: Path, out: Path, preset: str, *extra: str) -> dict:
    assert main(["--teacher", str(teacher), "--preset", preset, "--out", str(out), *FAST, *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("preset", ["merge", "mpcformer", "mpcformer-2relu", "thex", "lite", "lite-er", "merge-er-only",
                                    "merge-mm-only"])
def test_each_preset_distils_and_objective_falls(capsys, tmp_path, teacher, preset):
    summary = distil(capsys, teacher, tmp_path, preset, "--max-steps", "8", "--eval-every", "8")
    assert summary["step"] == 8 and summary["best_val_loss"] < summary["initial_val_loss"]
    args = json.loads((tmp_path / "training_args.json").read_text())
    assert args["preset"] == preset and args["teacher"] == str(teacher) and args["task"] == "e2e_nlg"
    assert set(args["loss"]) >= {"ce", "kl", "hidden", "er_lambda"}
    student = D.load_student(tmp_path, expect_preset=preset)
    assert student.config.preset == preset and student.tokenizer is not None


def test_lite_range_is_a_saved_model_knob(capsys, tmp_path, teacher):
    """--lite-range names the reciprocal range: the attentions use it, the penalty bound and the calibration follow
    it, the saved student keeps it, a bad name is refused."""
    from mpcgen import approx

    high = D.build_student(teacher, "lite", lite_range="high")
    cores = [m for m in high.modules() if getattr(m, "kind", None) == "2quad-lite"]
    assert high.config.lite_range == "high" and cores and all(c.options == {"reciprocal_range": "high"} for c in cores)
    assert D.build_student(teacher, "lite").config.lite_range == "standard"
    assert approx.two_quad_lite_safe("high") == 16.0 and approx.two_quad_lite_safe("standard") == 8.0
    distil(capsys, teacher, tmp_path, "lite", "--lite-range", "high", "--max-steps", "2", "--eval-every", "2")
    assert D.load_student(tmp_path, expect_preset="lite").config.lite_range == "high"
    with pytest.raises(MpcgenError, match="--lite-range 'huge'"):
        D.build_student(teacher, "lite", lite_range="huge")


def test_er_rollout_equals_stepwise_forward(teacher):
    model = D.build_student(teacher, "merge", resend_norm="rmsnorm").eval()
    with torch.no_grad():
        for p in model.parameters():  # a non-trivial model: random constant attention and resend gain
            p.add_(torch.randn_like(p) * 0.05)
    prompt = torch.randint(5, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        tokens, states = decode(model, {"input_ids": prompt}, max_new_tokens=6, decoding="er", return_states=True)
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
    with torch.no_grad():
        tokens = decode(model, {"input_ids": prompt}, max_new_tokens=4, decoding="tokens")
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
    ref = stats.attention["stack.blocks.1.attn"].mean.mean(0)[:10, :10]
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
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "bert" / "training_args.json").write_text(json.dumps({"task": "e2e_nlg"}))
    with pytest.raises(MpcgenError, match="'bert' model; distillation supports \\['bart', 'gpt2', 't5'\\] teachers"):
        D.read_teacher(tmp_path / "bert")
    with pytest.raises(MpcgenError, match="only apply to ER presets"):
        D.loss_weights("mpcformer", er_lambda=0.5)
    with pytest.raises(MpcgenError, match="out of range"):
        D.build_student(teacher, "merge", constant_layers="5")
    assert main(["--teacher", str(teacher), "--preset", "nope", "--out", str(tmp_path / "x")]) == 2


def test_evaluate_cli_scores_a_student(capsys, tmp_path, teacher):
    distil(capsys, teacher, tmp_path, "merge", "--max-steps", "2", "--eval-every", "2")
    from mpcgen.models.loading import model_kind

    assert model_kind(tmp_path) == "student"
    assert evaluate.main(["--ckpt", str(tmp_path), "--limit", "3", "--max-new-tokens", "8", "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["n"] == 3 and record["checkpoint_kind"] == "student"
    assert record["decoding"]["decoding"] == "client"  # an ER student's default, recorded as it ran
    _scores_are_the_predictions(tmp_path, record)
    assert evaluate.main(["--ckpt", str(tmp_path), "--limit", "3", "--num-beams", "2"]) == 2


# ------------------------------------------------------------------------------------------------ encoder-decoders


@pytest.mark.parametrize("family", ["t5", "bart"])
@pytest.mark.parametrize("preset", ["merge", "mpcformer", "lite"])
def test_encdec_distils_reloads_and_evaluates(capsys, tmp_path, encdec_teachers, family, preset):
    """A constant-attention ER preset and two 2quad presets per family: the objective falls, the student reloads
    bit-exactly as saved, another preset is refused, and nlg.evaluate decodes it (ER rollout / token re-embedding)."""
    summary = distil(capsys, encdec_teachers[family], tmp_path, preset, "--max-steps", "8", "--eval-every", "8")
    assert summary["step"] == 8 and summary["best_val_loss"] < summary["initial_val_loss"]
    args = json.loads((tmp_path / "training_args.json").read_text())
    assert args["is_encoder_decoder"] is True and args["model"] == family and args["preset"] == preset
    student = D.load_student(tmp_path, expect_preset=preset)
    assert student.config.arch == "encoder-decoder" and student.tokenizer is not None
    saved = load_file(str(tmp_path / "resume" / "model.safetensors"))
    own = student.state_dict()
    assert saved.keys() == own.keys() and all(torch.equal(saved[k], own[k]) for k in own)
    other = "mpcformer" if preset == "merge" else "merge"
    with pytest.raises(MpcgenError, match=f"holds a '{preset}' student, not '{other}'"):
        D.load_student(tmp_path, expect_preset=other)
    assert evaluate.main(["--ckpt", str(tmp_path), "--limit", "3", "--max-new-tokens", "8", "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["n"] == 3 and record["checkpoint_kind"] == "student"
    _scores_are_the_predictions(tmp_path, record)


def _scores_are_the_predictions(ckpt, record) -> None:
    """The metrics written are those of the predictions written (3 sources), against their references; and the
    predictions are what the one decoding loop gives for the saved student."""
    from mpcgen.data import load_grouped
    from mpcgen.generation.texts import decode_texts
    from mpcgen.metrics import corpus_scores
    from mpcgen.models.loading import load_model

    predictions = (ckpt / "predictions-test.txt").read_text().splitlines()
    examples = load_grouped("e2e", "test")[:3]
    assert len(predictions) == 3
    expect = corpus_scores(predictions, [list(ex.references) for ex in examples],
                           slots=[list(ex.slots) for ex in examples], task="e2e_nlg")
    assert all(record[k] == pytest.approx(v) for k, v in expect.items())
    student = load_model(ckpt)
    again = decode_texts(student, student.tokenizer, [ex.source for ex in examples], max_new_tokens=8,
                         progress=False)
    assert predictions == [" ".join(t.split()) for t in again]


def _stepwise_reference(model, src, steps: int, *, resend: bool):
    """Greedy decoding with no cache: the whole decoder input re-run each step (token ids or resent states)."""
    start = torch.full((src.size(0), 1), model.config.decoder_start_token_id)
    embeds, tokens, states = D.token_embeddings(model, start), [], []
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=src, decoder_inputs_embeds=embeds, use_cache=False)
            h, nxt = out.hidden[:, -1:], out.logits[:, -1].argmax(-1)
            tokens.append(nxt)
            states.append(h)
            fed = model.resend_token(h) if resend else D.token_embeddings(model, nxt[:, None])
            embeds = torch.cat([embeds, fed], dim=1)
    return torch.stack(tokens, 1), torch.cat(states, 1)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encdec_decoding_equals_stepwise_forward_and_private_loop(encdec_teachers, family):

    model = D.build_student(encdec_teachers[family], "merge", resend_norm="rmsnorm").eval()
    with torch.no_grad():
        for p in model.parameters():  # a non-trivial model: random constant attention and resend gain
            p.add_(torch.randn_like(p) * 0.05)
    src = torch.randint(5, model.config.vocab_size, (2, 7))
    for resend, decoding in ((True, "er"), (False, "tokens")):
        with torch.no_grad():  # the one loop: what private generation runs and nlg.evaluate scores
            tokens, states = decode(model, {"input_ids": src}, max_new_tokens=6, decoding=decoding,
                                    return_states=True)
        ref_tokens, ref_states = _stepwise_reference(model, src, 6, resend=resend)
        assert torch.equal(tokens, ref_tokens)
        torch.testing.assert_close(states, ref_states, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encdec_teacher_statistics_initialise_every_attention_and_norm(encdec_teachers, tokenizer, data_dir, family):
    from mpcgen.train import Collator, encode_examples

    path = encdec_teachers[family]
    hf = D.load_hf_teacher(path)
    rows = encode_examples(tokenizer, load_examples("e2e", "train", data_dir)[:12], is_encoder_decoder=True,
                           max_length=64)
    batch = Collator(tokenizer.pad_token_id)(rows)
    stats = D.teacher_statistics(hf, [batch])
    student = D.build_student(path, "merge")
    # 2 encoder self-, 2 decoder self- and 2 cross-attentions; every norm the teacher has (T5: 2 + 1 encoder,
    # 3 + 1 decoder per layer/final; BART: embedding norm + 2 per encoder layer, embedding norm + 3 per decoder layer).
    assert D.init_constant_attention(student, stats) == 6
    assert D.init_affine_norms(student, stats) == 12
    lay = D.layout(student.config, batch)
    # Constant rows reproduce the head-mean teacher attention on observed rows: decoder self-attention (causal)...
    t = int(lay.mask.sum(1).min())  # rows every example has
    mean = stats.attention["decoder.blocks.0.attn"].mean.mean(0)[:t, :t]
    a = student.decoder.blocks[0].attn.core.constant_weights(0, t, t, None)[0, 0]
    torch.testing.assert_close(torch.tril(a), mean, atol=1e-4, rtol=1e-3)
    # ... and cross-attention over source positions (no causal mask; keys past every source masked out).
    s = stats.attention["decoder.blocks.1.cross_attn"].mean.size(-1)
    assert s == batch["input_ids"].size(1)
    a = student.decoder.blocks[1].cross_attn.core.constant_weights(0, t, s, None)[0, 0]
    torch.testing.assert_close(a, stats.attention["decoder.blocks.1.cross_attn"].mean.mean(0)[:t], atol=1e-4,
                               rtol=1e-3)
    assert float(a.detach().sum(-1).min()) > 0.999
    # The calibrated affine norm of an RMSNorm (T5) keeps a zero bias: the teacher's mean is not subtracted.
    if family == "t5":
        assert float(student.encoder.blocks[0].norm1.bias.detach().abs().max()) == 0.0
        mu, sigma = stats.norms["encoder.blocks.0.norm1"]
        assert mu == 0.0 and sigma > 0


def test_encdec_layout_and_hidden_layers(encdec_teachers, tokenizer):
    """Decoder inputs are the labels shifted behind the start token; the hidden loss covers encoder and decoder."""
    student = D.build_student(encdec_teachers["t5"], "mpcformer")
    labels = torch.tensor([[7, 8, 2], [9, 2, -100]])
    batch = {"input_ids": torch.tensor([[5, 6, 2], [5, 2, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
             "labels": labels}
    lay = D.layout(student.config, batch)
    start = student.config.decoder_start_token_id
    assert lay.ids.tolist() == [[start, 7, 8], [start, 9, 2]] and lay.mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert lay.generated.tolist() == [[False, True, True], [False, True, True]]
    assert torch.equal(lay.target, labels)
    _, layers = D.forward_layout(student, lay, D.token_embeddings(student, lay.ids), return_hidden=True)
    assert len(layers) == 4 and torch.equal(layers[0][1], batch["attention_mask"])
    no_start = dataclasses.replace(student.config, decoder_start_token_id=None)
    with pytest.raises(MpcgenError, match="no decoder_start_token_id"):
        D.layout(no_start, batch)


def test_every_preset_has_its_distillation_losses():
    from mpcgen.distill.objective import PRESET_LOSSES
    from mpcgen.models import PRESETS

    assert set(PRESET_LOSSES) == set(PRESETS)


def test_lite_calibration_keeps_the_reciprocal_in_range(tokenizer, teacher, data_dir):
    from mpcgen import train as T
    from mpcgen.distill.objective import lite_arguments

    student = D.build_student(teacher, "lite").eval()
    attn = student.stack.blocks[0].attn
    with torch.no_grad():  # a teacher with large scores: a far past the range where the Newton steps converge
        attn.q.weight.normal_(0.0, 1.0)
        attn.k.weight.normal_(0.0, 1.0)
        student.wte.weight.mul_(100.0)
    examples = load_examples("e2e", "train", data_dir)[:16]
    rows = T.encode_examples(tokenizer, examples, is_encoder_decoder=False, max_length=64)
    batches = [T.Collator(tokenizer.pad_token_id)(rows[i:i + 8]) for i in (0, 8)]

    def peak() -> float:
        seen = []
        handle = attn.core.register_forward_hook(
            lambda core, args, kwargs, out: seen.append(lite_arguments(core, args, kwargs)), with_kwargs=True)
        with torch.no_grad():
            for b in batches:
                lay = D.layout(student.config, b)
                D.forward_layout(student, lay, D.token_embeddings(student, lay.ids))
        handle.remove()
        return max(float(a.max()) for a in seen)

    from mpcgen import approx

    target = approx.two_quad_lite_safe("standard") * 2 / 3
    assert peak() > sum(approx.TWO_QUAD_LITE_RANGES["standard"][:2])
    factors = D.calibrate_lite_attention(student, batches)
    assert 0 < factors["stack.blocks.0.attn"] < 1 and factors["stack.blocks.1.attn"] == 1.0
    assert target * 0.99 < peak() <= target  # shrunk to the target, not to uniform attention


def test_lite_range_penalty_is_zero_inside_and_pushes_arguments_back(tokenizer, teacher, data_dir):
    from mpcgen import train as T
    from mpcgen.distill.objective import Distiller

    student = D.build_student(teacher, "lite").eval()
    examples = load_examples("e2e", "train", data_dir)[:8]
    rows = T.encode_examples(tokenizer, examples, is_encoder_decoder=False, max_length=64)
    batch = T.Collator(tokenizer.pad_token_id)(rows)
    distiller = Distiller(None, D.loss_weights("lite", kl=0.0, hidden=0.0, ce=1.0), embedding_resend=False)
    _, parts = distiller.objective(student, batch, train=False)
    assert parts["range"] == 0.0  # a random student's arguments are ~1
    attn = student.stack.blocks[0].attn
    torch.manual_seed(1)
    with torch.no_grad():
        attn.q.weight.normal_(0.0, 1.0)
        attn.k.weight.normal_(0.0, 1.0)
        student.wte.weight.mul_(20.0)  # layer 0's largest arguments just past the safe bound, still finite
    loss, parts = distiller.objective(student, batch, train=False)
    assert parts["range"] > 0 and torch.isfinite(loss)
    loss.backward()
    assert attn.q.weight.grad.abs().sum() > 0
    with pytest.raises(MpcgenError, match="--range-weight must be >= 0"):
        D.loss_weights("lite", range=-1.0)


def test_er_self_term_penalises_a_state_that_points_at_its_own_input(tokenizer, teacher, data_dir):
    from mpcgen import train as T
    from mpcgen.distill.objective import Distiller

    student = D.build_student(teacher, "merge", resend_norm="rmsnorm").eval()
    examples = load_examples("e2e", "train", data_dir)[:4]
    batch = T.Collator(tokenizer.pad_token_id)(T.encode_examples(tokenizer, examples, is_encoder_decoder=False,
                                                                    max_length=64))
    distiller = Distiller(None, D.loss_weights("merge", er_self=1.0), embedding_resend=True)
    loss, parts = distiller.objective(student, batch, train=False)
    # By hand: relu(cos(r(h_t), E(x_t))) over target positions whose next token differs from their input.
    ids, target = batch["input_ids"], batch["labels"][:, 1:]
    with torch.no_grad():
        resent = student.resend_token(student(input_ids=ids, attention_mask=batch["attention_mask"]).hidden)[:, :-1]
    own = ids[:, :-1]
    keep = (target != -100) & (own != target)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(resent, student.wte(own), dim=-1).clamp(min=0)
    assert parts["er_self"] == pytest.approx(float(cos[keep].mean()), rel=1e-4)
    assert parts["er_self"] > 0.05  # the residual stream carries E(x_t) up to the resent state
    without, rest = Distiller(None, D.loss_weights("merge"), embedding_resend=True).objective(student, batch,
                                                                                            train=False)
    assert "er_self" not in rest
    assert float(loss - without) == pytest.approx(parts["er_self"], rel=1e-4)
    (loss - without).backward()  # the term alone reaches the blocks' weights
    assert student.stack.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0
    with pytest.raises(MpcgenError, match="--er-self must be >= 0"):
        D.loss_weights("merge", er_self=-0.1)
    with pytest.raises(MpcgenError, match="only apply to ER presets"):
        D.loss_weights("lite", er_self=0.5)


def test_frontier_puts_every_decoding_on_one_table_and_reuses_measured_costs(capsys, tmp_path, teacher, data_dir):
    from distill import frontier

    student = tmp_path / "merge"
    distil(capsys, teacher, student, "merge", "--max-steps", "2", "--eval-every", "2")
    out = tmp_path / "frontier"
    argv = ["--teacher", str(teacher), "--students", str(student), "--names", "teacher", "merge", "--limit", "3",
            "--data-dir", str(data_dir), "--prompt-length", "6", "--cost-tokens", "2", "--out", str(out)]
    assert frontier.main(argv) == 0
    rows = json.loads((out / "frontier.json").read_text())["rows"]
    # The teacher has no ER; the ER student is served each way. client costs at most a few rounds more than er
    # (here fewer: er pays the resend norm's inverse square root each token), tokens pays the secure argmax.
    assert [(r["name"], r["cost"]["decoding"]) for r in rows] == [
        ("teacher", "tokens"), ("teacher", "client"), ("merge", "tokens"), ("merge", "er"), ("merge", "client")]
    per = {r["cost"]["decoding"]: r["cost"]["per_token"]["rounds"] for r in rows if r["name"] == "merge"}
    assert per["client"] <= per["er"] + 4 and max(per["client"], per["er"]) < per["tokens"]
    assert all(r["quality"]["n"] == 3 and r["quality"]["ser"] is not None for r in rows)
    md = (out / "frontier.md").read_text()
    assert md.count("\n| merge |") == 3 and "SER" in md and "WAN s / token" in md
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A rerun measures nothing new: every cost record and score is read back from disk.
    costs = sorted(out.glob("cost-*.json"))
    stamps = [p.stat().st_mtime_ns for p in costs]
    capsys.readouterr()
    assert frontier.main(argv) == 0
    assert [p.stat().st_mtime_ns for p in sorted(out.glob("cost-*.json"))] == stamps and len(costs) == 5
    assert json.loads((out / "frontier.json").read_text())["rows"] == rows
    assert frontier.main([*argv[:4], "--names", "only-one", "--out", str(out)]) == 2


def test_frontier_script_covers_every_preset_and_its_commands_parse():
    """``scripts/frontier.sh --dry-run``: one student per preset (the mix too), every distill.run and frontier command
    parses, the last frontier call has every row, and the scale reaches the budgets."""
    import shlex
    import subprocess

    from transformers import HfArgumentParser

    from distill import frontier
    from distill.run import ARG_CLASSES
    from mpcgen.models import PRESETS

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(["bash", str(repo / "scripts" / "frontier.sh"), "--teacher", "T", "--dry-run", "--scale",
                          "0.5"], capture_output=True, text=True, check=True, cwd=repo)
    commands = [shlex.split(line[2:]) for line in res.stderr.splitlines() if line.startswith("+ ")]
    runs = [c for c in commands if c[1:3] == ["-m", "distill.run"]]
    fronts = [c for c in commands if c[1:3] == ["-m", "distill.frontier"]]
    presets = {c[c.index("--preset") + 1] for c in runs}
    assert presets == set(PRESETS) - {"vanilla", "merge-er-only", "mpcformer-2relu"}
    assert any("--constant-attention-layers" in c for c in runs) and len(fronts) == len(runs) + 1
    for c in runs:
        HfArgumentParser(ARG_CLASSES).parse_args_into_dataclasses(args=c[3:])
    assert {float(c[c.index("--max-minutes") + 1]) for c in runs} == {15.0, 7.5, 5.0}
    last = frontier.build_parser().parse_args(fronts[-1][3:])
    assert len(last.students) == len(runs) and len(last.names) == len(runs) + 1
    res = subprocess.run(["bash", str(repo / "scripts" / "frontier.sh"), "--teacher", "T", "--dry-run", "--only", "x"],
                         capture_output=True, text=True, cwd=repo)
    assert res.returncode == 2 and "unknown student 'x'" in res.stderr


def test_er_probe_reads_a_student_and_refuses_one_without_er(capsys, tmp_path, teacher, data_dir):
    from model_helpers import load_script

    er_probe = load_script("er_probe")
    distil(capsys, teacher, tmp_path / "merge", "merge", "--max-steps", "2", "--eval-every", "2")
    figures = er_probe.probe(str(tmp_path / "merge"), limit=8, data_dir=str(data_dir))
    assert figures["positions"] > 0
    assert all(0.0 <= figures[k] <= 1.0 for k in ("acc_teacher_forced", "acc_resent", "repeats_own_input"))
    assert -1.0 <= figures["cos_own"] <= 1.0 and -1.0 <= figures["cos_next"] <= 1.0
    distil(capsys, teacher, tmp_path / "lite", "lite", "--max-steps", "2", "--eval-every", "2")
    assert er_probe.main(["--ckpt", str(tmp_path / "lite"), "--data-dir", str(data_dir)]) == 2


def test_a_student_distils_on_public_pairs_written_by_its_teacher(capsys, caplog, tmp_path, data_dir):
    """The DP chain's data path: scripts/public_distill_data.py draws E2E MRs from the published schema with public
    (MultiWOZ) venue names and lets the teacher write their texts; distill.run --train-file then trains and
    validates on that file only (no example of the private set), and a malformed file is refused by line."""
    from model_helpers import load_script

    script = load_script("public_distill_data")
    names = script.public_names(data_dir)
    mrs = script.synthetic_mrs(60, names, seed=0)
    assert len(set(mrs)) == 60 and all(mr.startswith("name[") for mr in mrs)
    assert {mr.split("]")[0][len("name["):] for mr in mrs} <= set(names)
    from nlg.finetune import main as finetune

    # A teacher that writes words (a random one mostly ends at once): 30 steps of stage 1 on E2E.
    teacher = tmp_path / "teacher"
    assert finetune(["--task", "e2e", "--model", "gpt2", "--init", "scratch", "--size", "tiny", "--limit-train", "256",
                     "--limit-val", "16", "--batch-size", "16", "--vocab-size", "512", "--num-threads", "1",
                     "--max-steps", "30", "--eval-every", "30", "--lr", "3e-3", "--data-dir", str(data_dir),
                     "--out", str(teacher)]) == 0
    capsys.readouterr()
    pairs = tmp_path / "pairs.jsonl"
    assert script.main(["--teacher", str(teacher), "--n", "60", "--out", str(pairs), "--data-dir", str(data_dir),
                        "--max-new-tokens", "12"]) == 0
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert rows and {r["source"] for r in rows} <= set(mrs)
    summary = distil(capsys, teacher, tmp_path / "student", "lite", "--max-steps", "4", "--eval-every", "4",
                     "--train-file", str(pairs), "--holdout-percent", "20")
    args = json.loads((tmp_path / "student" / "training_args.json").read_text())
    train, val = T.load_pairs_file(pairs, 20)
    assert len(train) + len(val) == len(rows) and train and val
    assert args["train_split"] == "train_file" and (args["n_train"], args["n_val"]) == (min(len(train), 32),
                                                                                       min(len(val), 16))
    assert summary["step"] == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + '{"source": "name[X]"}\n')
    assert main(["--teacher", str(teacher), "--preset", "lite", "--out", str(tmp_path / "bad"), *FAST,
                 "--max-steps", "1", "--train-file", str(bad)]) == 2
    assert "bad.jsonl: line 2" in caplog.text
