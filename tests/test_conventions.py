"""Ecosystem conventions: the data as ``datasets.DatasetDict`` in the Hub's columns (staged files, and local JSON and
parquet files read through the Hub code path), SER and E2E BLEU/NIST as ``evaluate`` modules loaded from a local
folder, and ``nlg.finetune --init pretrained`` on locally saved random GPT-2, T5 and BART checkpoints.

The data and metric tests need the optional ``datasets`` and ``evaluate`` packages and skip without them; the
fine-tuning tests need neither. Every file is small and cut from the real staged data.
"""

from __future__ import annotations

import csv
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from mpcgen.data import (
    examples_from_dataset,
    grouped_from_dataset,
    load_dataset_dict,
    load_examples,
    load_grouped,
    load_hub_dataset_dict,
)
from mpcgen.data import e2e, multiwoz, webnlg
from mpcgen.errors import MpcgenError
from mpcgen.tokenization import train_bpe_tokenizer
from nlg.finetune import main as finetune

TASKS = ("e2e_nlg", "web_nlg", "multiwoz_nlg")
# The Hub datasets' columns, written out here so that a renamed column fails a test.
HUB_COLUMNS = {
    "e2e_nlg": ["meaning_representation", "human_reference"],
    "web_nlg": ["category", "size", "eid", "original_triple_sets.otriple_set", "modified_triple_sets.mtriple_set",
                "shape", "shape_type", "lex.comment", "lex.lid", "lex.text", "lex.lang"],
    "multiwoz_nlg": ["dialogue_id", "turn_id", "utterance", "dialogue_acts.dialog_act.act_type",
                     "dialogue_acts.dialog_act.act_slots.slot_name", "dialogue_acts.dialog_act.act_slots.slot_value"],
}
STAGED_SPLITS = {"e2e_nlg": ["train", "validation", "test"], "web_nlg": ["train", "validation", "test"],
                 "multiwoz_nlg": ["validation", "test"]}


@pytest.fixture(scope="module")
def small_data(data_dir: Path, tmp_path_factory) -> Path:
    """A data folder of real rows cut from the staged copy: 40 E2E rows per split, four WebNLG category files and
    30 test entries, 40 MultiWOZ turns per split."""
    root = tmp_path_factory.mktemp("small_data")
    (root / "e2e").mkdir()
    for name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
        with open(data_dir / "e2e" / name, newline="", encoding="utf-8") as src:
            rows = [row for _, row in zip(range(41), csv.reader(src))]
        with open(root / "e2e" / name, "w", newline="", encoding="utf-8") as dst:
            csv.writer(dst).writerows(rows)
    for rel in ("train/1triples/Monument_allSolutions.xml", "train/2triples/Monument.xml",
                "dev/1triples/Monument_allSolutions.xml", "dev/2triples/Monument.xml"):
        (root / "webnlg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "webnlg" / rel).write_bytes((data_dir / "webnlg" / rel).read_bytes())
    test_xml = "test/rdf-to-text-generation-test-data-with-refs-en.xml"
    tree = ET.parse(data_dir / "webnlg" / test_xml)
    entries = tree.getroot().find("entries")
    for entry in list(entries)[30:]:
        entries.remove(entry)
    (root / "webnlg" / test_xml).parent.mkdir(parents=True)
    tree.write(root / "webnlg" / test_xml, encoding="utf-8")
    (root / "multiwoz").mkdir()
    for name in ("validation.jsonl", "test.jsonl"):
        with open(data_dir / "multiwoz" / name, encoding="utf-8") as src:
            (root / "multiwoz" / name).write_text("".join(line for _, line in zip(range(40), src)), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def datasets():
    return pytest.importorskip("datasets")


# -- data ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_dataset_dict_has_hub_columns_and_converts_like_the_loaders(datasets, small_data, task):
    data = load_dataset_dict(task, small_data)
    assert isinstance(data, datasets.DatasetDict) and list(data) == STAGED_SPLITS[task]
    module = {"e2e_nlg": e2e, "web_nlg": webnlg, "multiwoz_nlg": multiwoz}[task]
    assert list(module.HUB_COLUMNS) == HUB_COLUMNS[task]
    for split, dataset in data.items():
        assert dataset.column_names == HUB_COLUMNS[task]
        examples = load_examples(task, split, small_data)
        assert len(examples) > 10
        assert examples_from_dataset(task, dataset) == examples
        assert grouped_from_dataset(task, dataset) == load_grouped(task, split, small_data)
    if task == "e2e_nlg":  # raw text, one row per reference, as the CSV holds it
        assert data["train"][0]["meaning_representation"].startswith("name[The Vaults], eatType[pub]")
    if task == "web_nlg":
        row = data["test"][0]
        assert len(row["modified_triple_sets.mtriple_set"]) == 1 and len(row["lex.text"]) == len(row["lex.lid"]) > 0
    if task == "multiwoz_nlg":
        row = data["validation"][0]
        assert row["dialogue_id"] == "PMUL0698.json" and row["turn_id"] == "1"
        assert row["dialogue_acts.dialog_act.act_type"] == ["Restaurant-Request", "Restaurant-Inform"]
        assert row["dialogue_acts.dialog_act.act_slots.slot_value"] == [["?"], ["all price ranges"]]


def test_dataset_dict_split_errors(datasets, small_data):
    with pytest.raises(MpcgenError, match="no train split"):
        load_dataset_dict("multiwoz", small_data, splits=["train"])
    with pytest.raises(MpcgenError, match="unknown split 'dev'"):
        load_dataset_dict("e2e", small_data, splits=["dev"])
    assert list(load_dataset_dict("e2e", small_data, splits=["test"])) == ["test"]


def _nested_webnlg(row: dict) -> dict:
    """A flattened record back in the Hub's nesting (plus a column the conversion must ignore)."""
    nested = {key: value for key, value in row.items() if "." not in key}
    for column in ("original_triple_sets", "modified_triple_sets", "lex"):
        nested[column] = {key.split(".", 1)[1]: value for key, value in row.items() if key.startswith(column + ".")}
    return {**nested, "test_category": ""}


def _turn(turn_id: str, speaker: int, utterance: str, types: list, names: list, values: list) -> dict:
    slots = [{"slot_name": n, "slot_value": v} for n, v in zip(names, values)]
    return {"turn_id": turn_id, "speaker": speaker, "utterance": utterance,
            "dialogue_acts": {"dialog_act": {"act_type": types, "act_slots": slots}}}


def _nested_multiwoz(rows: list[dict]) -> Iterator[dict]:
    """System-turn records -> Hub-shaped dialogues: a user turn (with acts) before each system turn, and one system
    turn without acts; both must be dropped again."""
    dialogues: dict[str, list[dict]] = {}
    for row in rows:
        turns = dialogues.setdefault(row["dialogue_id"], [])
        turns.append(_turn(str(int(row["turn_id"]) - 1), 0, "I want a cheap restaurant .", ["Restaurant-Inform"],
                           [["Price"]], [["cheap"]]))
        turns.append(_turn(row["turn_id"], 1, row["utterance"], *(row[k] for k in HUB_COLUMNS["multiwoz_nlg"][3:])))
    for number, (dialogue_id, turns) in enumerate(dialogues.items()):
        if number == 0:
            turns.append(_turn("99", 1, "You are welcome .", [], [], []))
        # The Hub's Sequence of dicts: one dict of lists.
        yield {"dialogue_id": dialogue_id, "services": ["restaurant"],
               "turns": {key: [turn[key] for turn in turns] for key in turns[0]}}


def _hub_shaped(task: str, dataset) -> list[dict]:
    rows = [dict(row) for row in dataset]
    if task == "web_nlg":
        return [_nested_webnlg(row) for row in rows]
    if task == "multiwoz_nlg":
        return list(_nested_multiwoz(rows))
    return rows


@pytest.mark.parametrize("fmt", ["json", "parquet"])
@pytest.mark.parametrize("task", TASKS)
def test_hub_shaped_files_load_through_the_hub_path(datasets, small_data, tmp_path, task, fmt):
    """Files in the Hub's own shape (nested for WebNLG and MultiWOZ, WebNLG's validation named ``dev``) load with
    ``datasets.load_dataset(fmt, data_files=...)`` inside load_hub_dataset_dict and convert as the staged files do."""
    local = load_dataset_dict(task, small_data)
    files = {}
    for split, dataset in local.items():
        name = "dev" if (task == "web_nlg" and split == "validation") else split
        path = tmp_path / f"{name}.{fmt}"
        shaped = datasets.Dataset.from_list(_hub_shaped(task, dataset))
        if fmt == "json":
            shaped.to_json(path)
            if task == "web_nlg":  # really nested on disk
                assert "modified_triple_sets" in json.loads(path.read_text().splitlines()[0])
        else:
            shaped.to_parquet(path)
        files[name] = str(path)
    loaded = load_hub_dataset_dict(task, path=fmt, data_files=files, cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == list(local)
    for split, dataset in loaded.items():
        assert dataset.features == local[split].features
        assert examples_from_dataset(task, dataset) == load_examples(task, split, small_data)
    only_test = load_hub_dataset_dict(task, path=fmt, data_files=files, splits=["test"],
                                      cache_dir=str(tmp_path / "cache"))
    assert list(only_test) == ["test"]


def test_hub_path_errors(datasets, small_data, tmp_path):
    path = tmp_path / "test.json"
    datasets.Dataset.from_list([{"mr": "name[The Eagle]", "ref": "The Eagle."}]).to_json(path)
    with pytest.raises(MpcgenError, match=r"lacks column\(s\) \['meaning_representation', 'human_reference'\]"):
        load_hub_dataset_dict("e2e", path="json", data_files={"test": str(path)}, cache_dir=str(tmp_path / "c"))
    with pytest.raises(MpcgenError, match=r"no split\(s\) \['validation'\]"):
        load_hub_dataset_dict("e2e", path="json", data_files={"test": str(path)}, splits=["validation"],
                              cache_dir=str(tmp_path / "c"))
    with pytest.raises(MpcgenError, match="splits="):
        load_hub_dataset_dict("e2e", path="json", data_files={"test": str(path)}, split="test")


# -- evaluate modules ---------------------------------------------------------------------------------------------


def _scored_items(data_dir: Path, task: str, n: int) -> tuple[list[str], list[tuple[str, ...]], list]:
    """Real items with predictions of mixed quality: an item's own reference, or the next item's (wrong slots)."""
    items = load_grouped(task, "test", data_dir)[:n]
    predictions = [items[i if i % 2 == 0 else (i + 1) % n].references[0] for i in range(n)]
    return predictions, [g.references for g in items], [g.slots for g in items]


def test_evaluate_modules_load_from_local_folders_and_match_the_library(datasets, data_dir):
    evaluate = pytest.importorskip("evaluate")
    from mpcgen.metrics import bleu_e2e, evaluate_module_path, nist_e2e, ser_details, slot_error_rate

    predictions, references, slots = _scored_items(data_dir, "e2e", 40)
    bleu_nist = evaluate.load(evaluate_module_path("e2e_bleu_nist"))
    scores = bleu_nist.compute(predictions=predictions, references=[list(r) for r in references])
    assert scores == {"bleu": bleu_e2e(predictions, references), "nist": nist_e2e(predictions, references)}
    assert 0.1 < scores["bleu"] < 0.95 and scores["nist"] > 1  # not a degenerate case
    # One reference per item may be a bare string.
    single = bleu_nist.compute(predictions=predictions, references=[r[0] for r in references])
    assert single["bleu"] == bleu_e2e(predictions, [[r[0]] for r in references])

    ser = evaluate.load(evaluate_module_path("ser"), config_name="e2e_nlg")
    result = ser.compute(predictions=predictions, slots=[[list(pair) for pair in item] for item in slots])
    details = ser_details(predictions, slots, "e2e")
    assert result == {"ser": slot_error_rate(predictions, slots, "e2e"), "total": sum(d.total for d in details),
                      "missing": sum(len(d.missing) for d in details), "added": sum(len(d.added) for d in details)}
    assert 0 < result["ser"] < 1 and result["missing"] > 0 and result["added"] > 0

    mw_predictions, _, mw_slots = _scored_items(data_dir, "multiwoz", 40)
    untyped = evaluate.load(evaluate_module_path("ser"))  # no config: the task comes with compute
    mw = untyped.compute(predictions=mw_predictions, slots=[[list(p) for p in s] for s in mw_slots], task="multiwoz")
    assert mw["ser"] == slot_error_rate(mw_predictions, mw_slots, "multiwoz_nlg") > 0
    with pytest.raises(ValueError, match="needs the task"):
        untyped.compute(predictions=mw_predictions, slots=[[list(p) for p in s] for s in mw_slots])
    with pytest.raises(MpcgenError, match=r"\['e2e_bleu_nist', 'ser'\]"):
        evaluate_module_path("bleu")


# -- nlg.finetune --init pretrained -------------------------------------------------------------------------------


def _gpt2_style_tokenizer(texts: list[str]):
    """A byte-level BPE with GPT-2's single special token, so loading must add <pad> and <sep> and grow the model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def save_tiny_pretrained(family: str, folder: Path, data_dir: Path, *, positions: int = 64) -> Path:
    """A random tiny model of ``family`` and its tokenizer, saved with ``save_pretrained``; T5 gets 4 spare embedding
    rows beyond its tokenizer (as t5-small has 28), which loading must keep."""
    import transformers as tf

    texts = [t for ex in load_examples("e2e", "train", data_dir) for t in (ex.source, ex.target)]
    tokenizer = _gpt2_style_tokenizer(texts) if family == "gpt2" else train_bpe_tokenizer(texts, vocab_size=400)
    vocab = len(tokenizer)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1)
    if family == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=32, n_layer=2,
                                                 n_head=2, bos_token_id=tokenizer.bos_token_id, **ids))
    elif family == "t5":
        model = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=vocab + 4, d_model=32, d_kv=16, d_ff=64,
                                                          num_layers=2, num_heads=2,
                                                          decoder_start_token_id=tokenizer.pad_token_id, **ids))
    else:
        model = tf.BartForConditionalGeneration(tf.BartConfig(
            vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=positions,
            bos_token_id=tokenizer.bos_token_id, decoder_start_token_id=tokenizer.eos_token_id, **ids))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _run(small_data: Path, model: str, init: Path, out: Path, *extra: str) -> int:
    return finetune(["--task", "e2e", "--data-dir", str(small_data), "--model", model, "--init", "pretrained",
                     "--name-or-path", str(init), "--out", str(out), "--limit-train", "32", "--limit-val", "16",
                     "--batch-size", "8", "--warmup-steps", "1", "--eval-every", "1", "--num-threads", "2",
                     "--max-length", "64", *extra])


@pytest.mark.parametrize("model", ["gpt2", "t5", "bart"])
def test_finetune_init_pretrained_loads_the_saved_weights(capsys, small_data, tmp_path, model):
    """With lr 0 one step changes nothing, so the checkpoint written must be the saved model itself: every tensor
    equal (GPT-2's token embeddings grown by the two added special tokens, T5's spare rows kept)."""
    init = save_tiny_pretrained(model, tmp_path / "init", small_data)
    assert _run(small_data, model, init, tmp_path / "out", "--max-steps", "1", "--lr", "0") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 1 and summary["first_train_loss"] > 0
    saved, written = load_file(init / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(saved) == set(written)
    for name, tensor in saved.items():
        got = written[name]
        if got.shape != tensor.shape:  # only GPT-2's tied token embeddings grow: <pad> and <sep>
            assert model == "gpt2" and name == "transformer.wte.weight" and got.shape[0] == tensor.shape[0] + 2
            got = got[: tensor.shape[0]]
        assert torch.equal(got, tensor), name
    args = json.loads((tmp_path / "out" / "training_args.json").read_text())
    assert args["init"] == "pretrained" and args["name_or_path"] == str(init) and args["model"] == model
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert config["vocab_size"] == len(tokenizer) + (4 if model == "t5" else 0)
    if model == "gpt2":
        assert (tokenizer.pad_token, tokenizer.sep_token) == ("<pad>", "<sep>")


def test_finetune_init_pretrained_refuses_mismatches(capsys, caplog, small_data, tmp_path):
    """A user error is one message and exit code 2, before any training: wrong family, too long --max-length, a
    folder without tokenizer, and resuming an --out that was trained from another checkpoint."""
    caplog.set_level(logging.ERROR, logger="nlg.finetune")
    init = save_tiny_pretrained("gpt2", tmp_path / "init", small_data, positions=32)
    assert _run(small_data, "gpt2", init, tmp_path / "out") == 2
    assert "--max-length 64 exceeds the 32 positions" in caplog.text and "n_positions" in caplog.text
    assert _run(small_data, "t5", init, tmp_path / "out2") == 2
    assert "holds a 'gpt2' model, not t5" in caplog.text
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((init / name).read_bytes())
    assert _run(small_data, "gpt2", bare, tmp_path / "out3", "--max-length", "32") == 2
    assert "has no tokenizer" in caplog.text

    assert _run(small_data, "gpt2", init, tmp_path / "out", "--max-length", "32", "--max-steps", "1") == 0
    other = save_tiny_pretrained("gpt2", tmp_path / "other", small_data, positions=32)
    caplog.clear()
    assert _run(small_data, "gpt2", other, tmp_path / "out", "--max-length", "32", "--max-steps", "2") == 2
    assert "different settings" in caplog.text and "name_or_path" in caplog.text
    capsys.readouterr()


def test_public_pretraining_on_a_union_of_tasks_then_fine_tuning_from_it(capsys, small_data, tmp_path):
    """``--task webnlg+multiwoz`` trains one model on both tasks' training rows (the public corpus of the DP recipe:
    no E2E text in it), and ``--init pretrained`` then fine-tunes that folder on E2E."""
    common = ["--data-dir", str(small_data), "--model", "gpt2", "--init", "scratch", "--size", "tiny",
              "--limit-train", "24", "--limit-val", "8", "--batch-size", "8", "--warmup-steps", "1",
              "--eval-every", "2", "--num-threads", "2", "--vocab-size", "512", "--max-steps", "2"]
    public = tmp_path / "public"
    assert finetune(["--task", "webnlg+multiwoz", "--out", str(public), *common]) == 0
    args = json.loads((public / "training_args.json").read_text())
    assert args["task"] == "web_nlg+multiwoz_nlg" and args["train_split"] == "train+validation"
    assert args["n_train"] == 48 and args["n_val"] == 8  # 24 of each; validation interleaved by task
    capsys.readouterr()
    assert finetune(["--task", "webnlg+webnlg", "--out", str(tmp_path / "x"), *common]) == 2
    out = tmp_path / "e2e"
    assert _run(small_data, "gpt2", public, out, "--max-steps", "2") == 0
    args = json.loads((out / "training_args.json").read_text())
    assert args["task"] == "e2e_nlg" and args["name_or_path"] == str(public)
