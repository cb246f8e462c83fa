"""Public data and the DP recipe scripts: templated E2E pairs that realise every attribute, and the commands of
``scripts/dp_e2e.sh`` (templated pre-training, then DP-SGD) and ``scripts/dp_chain.sh`` (DP teacher -> student ->
private serving with public weights) parse and chain their outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpcgen.errors import MpcgenError


def test_templated_public_pairs_realise_every_attribute(tmp_path, data_dir):
    """``--realiser template``: public pre-training pairs with no model and no private data. By the slot error
    rules every attribute is realised; the only "added" values are words of the public venue names themselves
    ("the Shanghi Family Restaurant" reads as family-friendly)."""
    import random

    from model_helpers import load_script
    from mpcgen.data.e2e import parse_mr
    from mpcgen.metrics.ser import normalise, ser_details

    script = load_script("public_distill_data")
    names = script.public_names(data_dir)
    mrs = script.synthetic_mrs(3000, names, seed=0, composed=0.8)
    made_up = [slots_name(mr) not in names for mr in mrs]
    assert 0.75 < sum(made_up) / len(mrs) < 0.85  # names to copy, not a list to learn
    with pytest.raises(MpcgenError, match="composed share"):
        script.synthetic_mrs(5, names, seed=0, composed=1.5)
    rng = random.Random(0)
    texts = [script.template_text(mr, rng) for mr in mrs]
    assert len(set(texts)) == len(texts)
    for mr, text, errors in zip(mrs, texts, ser_details(texts, [parse_mr(mr) for mr in mrs], "e2e_nlg")):
        assert errors.missing == (), (mr, text)
        slots = dict(parse_mr(mr))
        entities = normalise(slots["name"] + " " + slots.get("near", ""))
        for attr, value in errors.added:
            assert (normalise(value) in entities or attr == "familyFriendly" and "famil" in entities), (mr, text)
    out = tmp_path / "pairs.jsonl"
    assert script.main(["--realiser", "template", "--n", "50", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 50 and all(r["target"].lower().startswith(("there is", slots_name(r["source"]).lower()))
                                for r in rows)
    # A teacher only with --realiser teacher; nothing written otherwise.
    assert script.main(["--realiser", "template", "--teacher", "T", "--n", "5", "--out", str(tmp_path / "x.jsonl"),
                        "--data-dir", str(data_dir)]) == 2
    assert script.main(["--n", "5", "--out", str(tmp_path / "y.jsonl"), "--data-dir", str(data_dir)]) == 2
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "y.jsonl").exists()
    with pytest.raises(MpcgenError, match="outside the E2E schema"):
        script.template_text("name[X], colour[red]", rng)


def slots_name(mr: str) -> str:
    return mr.split("]")[0][len("name["):]


def test_dp_chain_script_commands_parse_and_a_teacher_is_required():
    """``scripts/dp_chain.sh --dry-run``: public pairs, a student on them only, both scored, the student generated
    privately with private and with public weights; every command's arguments parse."""
    import shlex
    import subprocess

    from transformers import HfArgumentParser

    from distill.run import ARG_CLASSES
    from model_helpers import load_script
    from mpcgen import generate as generate_cli
    from nlg.evaluate import build_parser as evaluate_parser

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(["bash", str(repo / "scripts" / "dp_chain.sh"), "--teacher", "T", "--dry-run"],
                         capture_output=True, text=True, check=True, cwd=repo)
    commands = [shlex.split(line[2:].split(" > ")[0]) for line in res.stderr.splitlines() if line.startswith("+ ")]
    pairs = [c for c in commands if c[1].endswith("public_distill_data.py")]
    runs = [c for c in commands if c[1:3] == ["-m", "distill.run"]]
    evals = [c for c in commands if c[1:3] == ["-m", "nlg.evaluate"]]
    gens = [c for c in commands if c[1:3] == ["-m", "mpcgen.generate"]]
    assert len(pairs) == len(runs) == 1 and len(evals) == 2 and len(gens) == 2
    out = pairs[0][pairs[0].index("--out") + 1]
    assert runs[0][runs[0].index("--train-file") + 1] == out
    sargs, _, _ = HfArgumentParser(ARG_CLASSES).parse_args_into_dataclasses(args=runs[0][3:])
    assert sargs.teacher == "T" and sargs.preset == "lite"
    assert load_script("public_distill_data").parse_args(pairs[0][2:]).teacher == "T"
    for c in evals:
        evaluate_parser().parse_args(c[3:])
    assert sorted(generate_cli.build_parser().parse_args(c[3:]).weights for c in gens) == ["private", "public"]
    res = subprocess.run(["bash", str(repo / "scripts" / "dp_chain.sh")], capture_output=True, text=True, cwd=repo)
    assert res.returncode == 2 and "--teacher DIR is required" in res.stderr


def test_dp_e2e_recipe_commands_parse():
    """``scripts/dp_e2e.sh --dry-run``: templated public pairs, a public model trained on them only, then DP-SGD
    from it on E2E; every command's arguments parse, and the DP run starts from the public model."""
    import shlex
    import subprocess

    from transformers import HfArgumentParser

    from model_helpers import load_script
    from nlg.evaluate import build_parser as evaluate_parser
    from nlg.finetune import ARG_CLASSES as FINETUNE_ARGS

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(["bash", str(repo / "scripts" / "dp_e2e.sh"), "--dry-run", "--epsilon", "3"],
                         capture_output=True, text=True, check=True, cwd=repo)
    commands = [shlex.split(line[2:]) for line in res.stderr.splitlines() if line.startswith("+ ")]
    pairs = [c for c in commands if c[1].endswith("public_distill_data.py")]
    tunes = [c for c in commands if c[1:3] == ["-m", "nlg.finetune"]]
    evals = [c for c in commands if c[1:3] == ["-m", "nlg.evaluate"]]
    assert len(pairs) == 1 and len(tunes) == 2 and len(evals) == 2
    assert load_script("public_distill_data").parse_args(pairs[0][2:]).realiser == "template"
    parsed = [HfArgumentParser(FINETUNE_ARGS).parse_args_into_dataclasses(args=c[3:]) for c in tunes]
    (pub_data, _, pub_train, pub_priv), (dp_data, dp_model, _, dp_priv) = parsed
    assert pub_data.train_file == pairs[0][pairs[0].index("--out") + 1] and not pub_priv.dp
    assert dp_data.train_file is None and dp_priv.dp and dp_priv.target_epsilon == 3
    assert dp_model.name_or_path == pub_train.out
    assert pub_data.delex == dp_data.delex == "e2e"  # the DP run reads its model's placeholders
    assert dp_model.model == parsed[0][1].model == "gpt2" and "gpt2" in dp_model.name_or_path
    for c in evals:
        evaluate_parser().parse_args(c[3:])
    # The same recipe for the encoder-decoders: each family gets its own public model and output.
    res = subprocess.run(["bash", str(repo / "scripts" / "dp_e2e.sh"), "--dry-run", "--model", "bart", "--lr", "5e-3"],
                         capture_output=True, text=True, check=True, cwd=repo)
    tunes = [shlex.split(line[2:]) for line in res.stderr.splitlines() if " -m nlg.finetune " in line]
    (_, pub_model, pub_train, _), (_, dp_model, dp_train, _) = [
        HfArgumentParser(FINETUNE_ARGS).parse_args_into_dataclasses(args=c[3:]) for c in tunes]
    assert pub_model.model == dp_model.model == "bart" and dp_model.name_or_path == pub_train.out
    assert "bart" in pub_train.out and "bart" in dp_train.out and dp_train.lr == 5e-3
    for bad, message in ((["--bogus"], "unknown argument"), (["--model", "gpt3"], "--model must be")):
        res = subprocess.run(["bash", str(repo / "scripts" / "dp_e2e.sh"), *bad], capture_output=True, text=True,
                             cwd=repo)
        assert res.returncode == 2 and message in res.stderr
