"""Plaintext decoding (mpcgen.generation.hf, .texts) and the evaluation CLI (nlg.evaluate) on tiny random models.

The models are built from configs (no Hub access) with a BPE tokenizer trained on a few E2E texts, and saved in the
stage-1 checkpoint layout: HF model + tokenizer files + training_args.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    BartConfig,
    GenerationConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
)

from mpcgen.data import load_grouped
from mpcgen.errors import MpcgenError
from mpcgen.evaluation import _train_split_note
from mpcgen.generation import hf as decoding
from mpcgen.generation.hf import generate_texts, left_pad
from mpcgen.metrics import corpus_scores
from mpcgen.tokenization import encode_prompt, train_bpe_tokenizer
from nlg import evaluate

MAX_NEW = 8  # random models rarely stop early; keep decoding short
METRIC_KEYS = {"bleu", "nist", "rouge_l", "chrf", "ser", "n", "split", "limit", "decoding", "time_s"}


def _build(name: str, tok) -> torch.nn.Module:
    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}
    if name == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128, **ids))
    if name == "t5":
        config = T5Config(
            vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            decoder_start_token_id=tok.pad_token_id, **ids,
        )  # fmt: skip
        return T5ForConditionalGeneration(config)
    config = BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        decoder_start_token_id=tok.eos_token_id, **ids,
    )  # fmt: skip
    return BartForConditionalGeneration(config)


@pytest.fixture(scope="module")
def e2e_test(data_dir: Path):
    return load_grouped("e2e", "test", data_dir)


@pytest.fixture(scope="module")
def tokenizer(e2e_test):
    texts = [ex.source for ex in e2e_test[:200]] + [ref for ex in e2e_test[:200] for ref in ex.references]
    return train_bpe_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def models(tokenizer):
    torch.manual_seed(0)
    return {name: _build(name, tokenizer).eval() for name in ("gpt2", "t5", "bart")}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer, models) -> dict[str, Path]:
    """Each model saved in the stage-1 layout; tests copy nothing, so each writes distinct output names."""
    out = {}
    for name, model in models.items():
        ckpt = tmp_path_factory.mktemp(f"e2e_nlg-{name}")
        model.save_pretrained(ckpt)
        tokenizer.save_pretrained(ckpt)
        args = {
            "task": "e2e_nlg",
            "model": name,
            "is_encoder_decoder": model.config.is_encoder_decoder,
            "max_length": 128,
            "train_split": "train",
        }
        (ckpt / "training_args.json").write_text(json.dumps(args))
        out[name] = ckpt
    return out


def _ids_as_text(monkeypatch, tokenizer) -> None:
    """Make generate_texts return token ids (up to eos) so comparisons are exact, not up to detokenisation."""

    def decode(tok, ids):
        ids = list(ids)
        return " ".join(map(str, ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids))

    monkeypatch.setattr(decoding, "decode_output", decode)


# ------------------------------------------------------------------------------------------------------ decoding


def test_left_pad_masks_and_positions():
    input_ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_left_padded_batch_equals_one_at_a_time(monkeypatch, tokenizer, models, e2e_test):
    _ids_as_text(monkeypatch, tokenizer)
    sources = [ex.source for ex in e2e_test[:6]]
    lengths = {len(encode_prompt(tokenizer, s, is_encoder_decoder=False)) for s in sources}
    assert len(lengths) > 1, "the batch must need padding for this test to mean anything"
    kwargs = {"is_encoder_decoder": False, "max_new_tokens": MAX_NEW, "progress": False}
    batched = generate_texts(models["gpt2"], tokenizer, sources, batch_size=6, **kwargs)
    alone = [generate_texts(models["gpt2"], tokenizer, [s], **kwargs)[0] for s in sources]
    assert batched == alone
    assert all(batched), "a random model should generate some tokens"


def _reference_greedy(model, tokenizer, source: str, *, is_encoder_decoder: bool) -> str:
    """Greedy search written out: full forward each step, no cache, argmax, stop at eos."""
    prompt = encode_prompt(tokenizer, source, is_encoder_decoder=is_encoder_decoder)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(MAX_NEW):
            if is_encoder_decoder:
                dec = [model.config.decoder_start_token_id] + out
                logits = model(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([dec])).logits
            else:
                logits = model(input_ids=torch.tensor([prompt + out])).logits
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == tokenizer.eos_token_id:
                break
    return " ".join(map(str, out[:-1] if out[-1] == tokenizer.eos_token_id else out))


@pytest.mark.parametrize("name", ["gpt2", "t5", "bart"])
def test_greedy_matches_reference_loop(monkeypatch, tokenizer, models, e2e_test, name):
    _ids_as_text(monkeypatch, tokenizer)
    model, is_ed = models[name], models[name].config.is_encoder_decoder
    sources = [ex.source for ex in e2e_test[:3]]
    got = generate_texts(model, tokenizer, sources, is_encoder_decoder=is_ed, max_new_tokens=MAX_NEW, progress=False)
    assert got == [_reference_greedy(model, tokenizer, s, is_encoder_decoder=is_ed) for s in sources]


def test_beam_settings_are_ignored_with_one_beam(monkeypatch, tokenizer, models, e2e_test):
    # num_beams=1 is greedy search whatever the beam-only knobs say; a saved generation_config must not leak in.
    _ids_as_text(monkeypatch, tokenizer)
    model, sources = models["bart"], [ex.source for ex in e2e_test[:3]]
    kwargs = {"is_encoder_decoder": True, "max_new_tokens": MAX_NEW, "progress": False}
    greedy = generate_texts(model, tokenizer, sources, **kwargs)
    saved = model.generation_config
    model.generation_config = GenerationConfig(num_beams=4, min_new_tokens=MAX_NEW, no_repeat_ngram_size=1)
    try:
        assert generate_texts(model, tokenizer, sources, num_beams=1, length_penalty=2.0, **kwargs) == greedy
    finally:
        model.generation_config = saved
    assert model.generation_config is saved


def test_bad_settings_raise(tokenizer, models):
    with pytest.raises(MpcgenError, match="num_beams"):
        generate_texts(models["gpt2"], tokenizer, ["x"], is_encoder_decoder=False, num_beams=0)
    with pytest.raises(MpcgenError, match="positions"):
        generate_texts(models["gpt2"], tokenizer, ["x"], is_encoder_decoder=False, max_new_tokens=500)


def test_long_prompt_is_truncated_to_fit(tokenizer, models):
    from mpcgen.tokenization import TRUNCATIONS

    before = TRUNCATIONS["prompt"]
    long_source = "name[The Vaults], " * 200  # far more tokens than the 128 positions
    texts = generate_texts(models["gpt2"], tokenizer, [long_source, "name[x]"], is_encoder_decoder=False,
                           max_new_tokens=8, progress=False)
    assert len(texts) == 2 and TRUNCATIONS["prompt"] == before + 1


# ----------------------------------------------------------------------------------------------------------- CLI


def _run(capsys, ckpt: Path, data_dir: Path, *extra: str) -> dict:
    argv = ["--ckpt", str(ckpt), "--split", "test", "--limit", "5", "--data-dir", str(data_dir)]
    assert evaluate.main([*argv, "--max-new-tokens", str(MAX_NEW), "--no-progress", *extra]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(last)


@pytest.mark.parametrize("name", ["gpt2", "t5", "bart"])
def test_cli_writes_predictions_and_metrics(capsys, checkpoints, data_dir, name):
    ckpt = checkpoints[name]
    printed = _run(capsys, ckpt, data_dir)
    lines = (ckpt / "predictions-test.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 6 and lines[-1] == ""  # 5 lines, each newline-terminated
    # the scores are those of the written predictions against the first five test sources' references
    refs = load_grouped("e2e", "test", data_dir)[:5]
    expect = corpus_scores(lines[:5], [list(ex.references) for ex in refs], slots=[list(ex.slots) for ex in refs],
                           task="e2e_nlg")
    assert printed["n"] == 5 and all(printed[k] == pytest.approx(v) for k, v in expect.items())
    metrics = json.loads((ckpt / "metrics-test.json").read_text())
    assert METRIC_KEYS <= set(metrics) and metrics == printed
    assert metrics["decoding"]["num_beams"] == 1 and metrics["limit"] == 5 and metrics["task"] == "e2e_nlg"


def test_cli_beam_search_names_outputs(capsys, checkpoints, data_dir):
    ckpt = checkpoints["gpt2"]
    printed = _run(capsys, ckpt, data_dir, "--num-beams", "2", "--out-prefix", "try")
    assert printed["decoding"] == {**printed["decoding"], "strategy": "beam", "num_beams": 2}
    assert len((ckpt / "try-predictions-test-beam2.txt").read_text().splitlines()) == 5
    assert json.loads((ckpt / "try-metrics-test-beam2.json").read_text())["n"] == 5


def _files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, checkpoints, data_dir, capsys):
    base = ["--split", "test", "--limit", "2", "--data-dir", str(data_dir), "--no-progress"]
    assert evaluate.main(["--ckpt", str(tmp_path / "missing"), *base]) == 2
    assert not (tmp_path / "missing").exists()

    not_model = tmp_path / "not_model"
    not_model.mkdir()
    (not_model / "notes.txt").write_text("hello")
    assert evaluate.main(["--ckpt", str(not_model), *base]) == 2
    assert _files(not_model) == {"notes.txt"}

    ckpt = checkpoints["t5"]
    before = _files(ckpt)
    assert evaluate.main(["--ckpt", str(ckpt), *base, "--split", "dev"]) == 2
    assert evaluate.main(["--ckpt", str(ckpt), *base, "--task", "nope"]) == 2
    assert _files(ckpt) == before
    assert capsys.readouterr().out == ""  # no JSON line on failure


def test_unknown_checkpoint_kind_names_both_kinds(tmp_path):
    from mpcgen.models.loading import model_kind

    with pytest.raises(MpcgenError, match="neither a saved mpcgen student .* nor a Hugging Face teacher"):
        model_kind(tmp_path)


def test_multiwoz_note_says_trained_on_validation():
    note = _train_split_note("multiwoz_nlg", "test", {"train_split": "validation"})
    assert note and "validation" in note
    assert _train_split_note("e2e_nlg", "test", {"train_split": "train"}) is None


@pytest.mark.parametrize("preset", ["mpcformer", "merge"])
def test_student_scoring_runs_the_private_loop(capsys, checkpoints, data_dir, tmp_path, preset):
    """What nlg.evaluate scores a student with is what private generation produces: the predictions it writes
    equal generate_plain's texts (the reference private generation must match) for the same sources."""
    from mpcgen.generation import generate_plain
    from mpcgen.models import import_hf, save_pretrained

    student = import_hf(checkpoints["gpt2"], preset=preset)
    with torch.no_grad():  # a non-trivial student: constant attention / approximations away from the teacher's
        for param in student.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    out = tmp_path / preset
    save_pretrained(student, out, tokenizer=student.tokenizer)
    (out / "training_args.json").write_text(json.dumps({"task": "e2e_nlg", "preset": preset}))
    printed = _run(capsys, out, data_dir)
    assert printed["checkpoint_kind"] == "student"
    sources = [ex.source for ex in load_grouped("e2e", "test", data_dir)[:5]]
    written = (out / "predictions-test.txt").read_text(encoding="utf-8").splitlines()
    plain = generate_plain(out, sources, max_new_tokens=MAX_NEW)
    assert written == [" ".join(r.text.split()) for r in plain]
