"""Bad input gets a clear error, never a traceback, and writes nothing half-made (issue 14).

One test per bad input: damaged weights, configs of the wrong types or with unknown keys, damaged tokenizers, student
folders of another format, malformed generation plans from a client, prompts a tokenizer cannot encode. Each kind is
also run end to end through a command line (a subprocess: exit status 2, one ``error`` line naming the file and what
is wrong, no traceback, no output file). The models are tiny and random (a GPT-2 teacher in the stage-1 layout, a
student saved by :func:`mpcgen.models.save_pretrained`), with a byte-level BPE tokenizer trained here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from model_helpers import free_port, tiny_config, word_tokenizer

from mpcgen.errors import MpcgenError
from mpcgen.generation import generate_plain
from mpcgen.generation.inputs import encode_client_text, encode_prompts
from mpcgen.generation.private import MAX_BATCH_SIZE, MAX_BATCHES, check_plan
from mpcgen.models import save_pretrained
from mpcgen.models.config import FORMAT_KEY, FORMAT_VERSION
from mpcgen.models.geometry import geometry_config, random_model
from mpcgen.models.io import from_pretrained
from mpcgen.models.loading import load_model, load_tokenizer
from mpcgen.tokenization import decode_output, train_bpe_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["name[The Eagle], food[French], area[riverside]", "The Eagle serves French food by the riverside."] * 20
PROMPT = "name[The Eagle], food[French]"
POSITIONS = 64


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """A stage-1 teacher folder (HF GPT-2, tokenizer, training_args.json) and a student folder, both intact."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    hf = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                          n_positions=POSITIONS, bos_token_id=tokenizer.bos_token_id,
                                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    hf.eval().save_pretrained(root / "teacher")
    tokenizer.save_pretrained(str(root / "teacher"))
    (root / "teacher" / "training_args.json").write_text(json.dumps({"task": "e2e_nlg", "model": "gpt2",
                                                                     "is_encoder_decoder": False}))
    config = geometry_config(preset="mpcformer", layers=1, d_model=16, heads=2, vocab=len(tokenizer),
                             positions=POSITIONS)
    save_pretrained(random_model(config), root / "student", tokenizer=tokenizer)
    return {"teacher": root / "teacher", "student": root / "student"}


@pytest.fixture
def teacher(saved, tmp_path) -> Path:
    """A fresh copy of the teacher folder, for one test to damage."""
    return Path(shutil.copytree(saved["teacher"], tmp_path / "teacher"))


@pytest.fixture
def student(saved, tmp_path) -> Path:
    """A fresh copy of the student folder, for one test to damage."""
    return Path(shutil.copytree(saved["student"], tmp_path / "student"))


# ------------------------------------------------------------------------------------------------------- helpers


def _edit_json(path: Path, **changes: Any) -> None:
    """Set keys of the JSON object in ``path`` (a value of ``...`` deletes the key)."""
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _cli(module: str, *args: str | bytes, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root (bytes arguments pass as they are)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          timeout=timeout)


def _generate(model: Path, *extra: str | bytes, prompt: str | bytes = PROMPT) -> subprocess.CompletedProcess:
    """Plaintext generation through the CLI (the same loading and checks as a private run, without parties)."""
    return _cli("mpcgen.generate", "--model", str(model), "--prompt", prompt, "--plaintext", "--max-new-tokens",
                "2", "--no-progress", *extra)


def _user_error(proc: subprocess.CompletedProcess | tuple[int, str]) -> str:
    """The one error line of a CLI that failed on user input (exit 2, no traceback); returns that line."""
    code, err = (proc.returncode, proc.stderr.decode(errors="replace")) if not isinstance(proc, tuple) else proc
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    # mpcgen's CLIs print "error: ..."; nlg.evaluate logs it ("... ERROR nlg.evaluate: ...").
    lines = [line for line in err.splitlines() if line.startswith("error: ") or " ERROR nlg.evaluate: " in line]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -------------------------------------------------------------------------------------------- 1. damaged weights


def test_truncated_student_weights_cli(student) -> None:
    weights = student / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    line = _user_error(_generate(student))
    assert str(weights) in line and "damaged or truncated" in line, line


def test_student_weights_of_random_bytes(student) -> None:
    (student / "model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(MpcgenError, match=r"model\.safetensors is damaged or truncated"):
        from_pretrained(student)


def test_truncated_teacher_weights_cli_writes_nothing(teacher, data_dir) -> None:
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    before = _files(teacher)
    line = _user_error(_cli("nlg.evaluate", "--ckpt", str(teacher), "--split", "test", "--limit", "2",
                            "--data-dir", str(data_dir), "--no-progress"))
    assert str(teacher) in line and "model.safetensors" in line and "damaged or truncated" in line, line
    assert _files(teacher) == before  # no predictions, no metrics, no temp file


def test_teacher_weights_cut_at_the_end(teacher) -> None:
    weights = teacher / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) * 9 // 10])  # the header is intact, the tensors are not
    with pytest.raises(MpcgenError, match=r"cannot load the weights \['model.safetensors'\].*not fully covered"):
        load_model(teacher)


# -------------------------------------------------------------------------------------------------- 2. configs


def test_student_config_bool_of_wrong_type_cli(student) -> None:
    # Before issue 14 this loaded: "yes" is truthy, so the model silently ran with merged linear layers.
    _edit_json(student / "config.json", merge_linear="yes")
    line = _user_error(_generate(student))
    assert f"{student / 'config.json'}: merge_linear='yes' must be of type bool, not str" in line, line


@pytest.mark.parametrize("changes,message", [
    ({"n_layer": "1"}, "n_layer='1' must be of type int, not str"),
    ({"n_layer": True}, "n_layer=True must be of type int, not bool"),
    ({"norm_eps": "1e-5"}, "norm_eps='1e-5' must be of type float"),
    ({"eos_token_id": 10 ** 6}, r"eos_token_id=1000000 is outside the vocabulary \[0, "),
    ({"extra": []}, "extra=\\[\\] must be of type dict"),
], ids=["int-as-str", "int-as-bool", "float-as-str", "token-id-out-of-vocab", "extra-not-a-dict"])
def test_student_config_value_of_wrong_type(student, changes, message) -> None:
    _edit_json(student / "config.json", **changes)
    with pytest.raises(MpcgenError, match=rf"student/config\.json: {message}"):
        load_model(student)


def test_student_config_unknown_key(student) -> None:
    data = json.loads((student / "config.json").read_text())
    data["n_lyer"] = data.pop("n_layer")
    (student / "config.json").write_text(json.dumps(data))
    with pytest.raises(MpcgenError, match=r"config\.json: unknown model config keys \['n_lyer'\]; did you mean "
                                          r"'n_layer' \(not 'n_lyer'\)\?"):
        load_model(student)


@pytest.mark.parametrize("text,message", [("{\"arch\": \"decoder\",", "is not valid JSON"),
                                          ("[1, 2]", "must hold a JSON object, not a list"),
                                          ("\xff\xfe", "is not valid JSON")], ids=["truncated", "list", "binary"])
def test_student_config_not_a_json_object(student, text, message) -> None:
    (student / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(MpcgenError, match=rf"student/config\.json {message}"):
        load_model(student)


def test_teacher_config_value_of_wrong_type(teacher, capsys) -> None:
    from mpcgen.generate import main

    _edit_json(teacher / "config.json", n_layer="two")
    line = _user_error((main(["--model", str(teacher), "--prompt", PROMPT, "--plaintext", "--no-progress"]),
                        capsys.readouterr().err))
    assert f"{teacher / 'config.json'}:" in line and "n_layer" in line and "expected int, got str" in line, line


def test_teacher_config_typo_cli_refused_not_random_weights(teacher) -> None:
    # Hugging Face would build the default 12 layers and fill 10 of them with random weights.
    data = json.loads((teacher / "config.json").read_text())
    data["n_lyer"] = data.pop("n_layer")
    (teacher / "config.json").write_text(json.dumps(data))
    line = _user_error(_generate(teacher))
    assert f"{teacher}: the weights do not fit config.json (120 tensors missing" in line, line
    assert "GPT2Config does not know: ['n_lyer']" in line, line


def test_teacher_config_extra_key_is_accepted(teacher) -> None:
    # Policy: keys a Hugging Face config class does not define load, as in transformers (Hub configs carry such
    # keys, e.g. GPT-2's n_ctx); they are refused only together with weights that do not fit (test above).
    _edit_json(teacher / "config.json", n_ctx=POSITIONS, my_note="kept")
    assert load_model(teacher).config.n_layer == 2


# ----------------------------------------------------------------------------------------------- 3. tokenizers


def test_truncated_student_tokenizer_cli(student) -> None:
    path = student / "tokenizer.json"
    path.write_text(path.read_text()[:300])
    line = _user_error(_generate(student))
    assert f"{path} is not valid JSON" in line and "damaged or truncated" in line, line


@pytest.mark.parametrize("text,message", [
    ('{"model": 3}', r"tokenizer\.json is not a valid tokenizer \(data did not match"),
    ("[1, 2, 3]", r"tokenizer\.json must hold a JSON object, not a list"),
], ids=["wrong-structure", "a-list"])
def test_teacher_tokenizer_of_wrong_structure(teacher, text, message) -> None:
    # Before issue 14 a teacher's damaged tokenizer was dropped silently ("text prompts need a tokenizer").
    (teacher / "tokenizer.json").write_text(text)
    with pytest.raises(MpcgenError, match=rf"teacher/{message}"):
        load_model(teacher)


def test_damaged_tokenizer_config_in_a_tokenizer_folder(saved, tmp_path) -> None:
    folder = Path(shutil.copytree(saved["teacher"], tmp_path / "tok", ignore=shutil.ignore_patterns("model*")))
    (folder / "tokenizer_config.json").write_text("{")
    with pytest.raises(MpcgenError, match=r"tok/tokenizer_config\.json is not valid JSON"):
        load_tokenizer(folder)


def test_weights_only_teacher_loads_without_tokenizer(teacher) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (teacher / name).unlink()
    assert getattr(load_model(teacher), "tokenizer", None) is None


# -------------------------------------------------------------------------------------------- 4. folder format


def test_save_records_the_format(saved) -> None:
    assert json.loads((saved["student"] / "config.json").read_text())[FORMAT_KEY] == FORMAT_VERSION


def test_student_of_a_newer_format_cli(student) -> None:
    _edit_json(student / "config.json", **{FORMAT_KEY: FORMAT_VERSION + 1, "a_future_field": 1})
    line = _user_error(_generate(student))
    # The format is checked before the keys: the new field is not what the user should hear about.
    assert (f"{student / 'config.json'}: written by mpcgen format {FORMAT_VERSION + 1}, this is {FORMAT_VERSION}: "
            "upgrade mpcgen") in line, line


@pytest.mark.parametrize("value", ["1", 0, 1.0, None], ids=["str", "zero", "float", "null"])
def test_student_format_that_is_no_format_number(student, value) -> None:
    _edit_json(student / "config.json", **{FORMAT_KEY: value})
    with pytest.raises(MpcgenError, match=rf"config\.json: {FORMAT_KEY}=.* must be a format number >= 1"):
        load_model(student)


def test_student_without_format_key_loads_as_format_1(student) -> None:
    # Folders saved before the key existed are format 1, the layout they were written in.
    assert FORMAT_VERSION == 1
    _edit_json(student / "config.json", **{FORMAT_KEY: ...})
    assert load_model(student).config.preset == "mpcformer"


def test_failed_save_leaves_no_files(tmp_path) -> None:
    class BrokenTokenizer:
        def save_pretrained(self, directory: str) -> None:
            (Path(directory) / "tokenizer.json").write_text("{")  # half written, then the serialiser fails
            raise OSError("disk full")

    model = random_model(tiny_config("gpt2"))
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, tmp_path / "out", tokenizer=BrokenTokenizer())
    assert _files(tmp_path / "out") == []


# ------------------------------------------------------------------------------------------ 5. generation plans

GOOD_PLAN = {"shapes": [(2, 5), (1, 7)], "max_new_tokens": 4, "decoding": "client"}


def test_good_plan_is_normalised() -> None:
    assert check_plan(dict(GOOD_PLAN, shapes=((2, 5), [1, 7])), tiny_config("gpt2")) == GOOD_PLAN


@pytest.mark.parametrize("plan,message", [
    ([1, 2], "the plan must be a dict, got list"),
    ({**GOOD_PLAN, "temperature": 0.7}, r"unknown \['temperature'\], missing \[\]"),
    ({"shapes": [(1, 3)], "max_new_tokens": 2}, r"missing \['decoding'\]"),
    ({"error": 5}, r"unknown \['error'\]"),
    ({**GOOD_PLAN, "max_new_tokens": 0}, r"max_new_tokens=0 must be an integer in \[1, 16\]"),
    ({**GOOD_PLAN, "max_new_tokens": True}, "max_new_tokens=True must be an integer"),
    ({**GOOD_PLAN, "max_new_tokens": "4"}, "max_new_tokens='4' must be an integer"),
    ({**GOOD_PLAN, "max_new_tokens": 11}, r"shapes\[1\]: prompt \(7 tokens\) \+ max_new_tokens \(11\) exceeds the "
                                          "model's 16 positions"),
    ({**GOOD_PLAN, "decoding": "beam"}, "unknown decoding 'beam'"),
    ({**GOOD_PLAN, "decoding": ["client"]}, "decoding=\\['client'\\] must be a string"),
    ({**GOOD_PLAN, "decoding": "er"}, "decoding 'er' .* needs a model trained for it"),
    ({**GOOD_PLAN, "shapes": []}, "got 0 batches"),
    ({**GOOD_PLAN, "shapes": [(1, 2)] * (MAX_BATCHES + 1)}, f"1 to {MAX_BATCHES} .* got {MAX_BATCHES + 1} batches"),
    ({**GOOD_PLAN, "shapes": "2x5"}, "pairs, got str"),
    ({**GOOD_PLAN, "shapes": [(1, 2, 3)]}, r"shapes\[0\]=\(1, 2, 3\) must be a \(batch size, prompt length\) pair"),
    ({**GOOD_PLAN, "shapes": [(0, 3)]}, r"shapes\[0\] batch size=0 must be an integer in \[1, "),
    ({**GOOD_PLAN, "shapes": [(MAX_BATCH_SIZE + 1, 3)]}, rf"batch size={MAX_BATCH_SIZE + 1} must be an integer in"),
    ({**GOOD_PLAN, "shapes": [(1, 0)]}, r"shapes\[0\] prompt length=0 must be an integer >= 1"),
    ({**GOOD_PLAN, "shapes": [(1, 2.5)]}, r"shapes\[0\] prompt length=2.5 must be an integer"),
], ids=["not-a-dict", "unknown-key", "missing-key", "error-not-text", "steps-zero", "steps-bool", "steps-str",
        "too-long", "decoding-unknown", "decoding-not-str", "decoding-er-untrained", "no-batches", "too-many-batches",
        "shapes-not-list", "shape-not-pair", "batch-size-zero", "batch-size-too-large", "length-zero",
        "length-float"])
def test_malformed_plan_is_refused(plan, message) -> None:
    with pytest.raises(MpcgenError, match=message):
        check_plan(plan, tiny_config("gpt2"))


BAD_PLAN = {"shapes": [(1, POSITIONS - 4)], "max_new_tokens": 10, "decoding": "client"}  # 69 positions of 64
REASON = ("shapes[0]: prompt (60 tokens) + max_new_tokens (10) exceeds the model's 64 positions; shorten the prompt "
          "or lower max_new_tokens")


def _party_with_bad_client(rank: int, model_dir: str, plan: dict[str, Any]) -> Any:
    """The real generation party; the client's plan builder is replaced so that it announces ``plan`` unchecked."""
    from mpcgen.generation import private
    from mpcgen.mpc.roles import CLIENT, SERVER

    if rank == CLIENT:
        private._client_plan = lambda *args, **kwargs: (plan, [], [])
    return private.generation_party(rank, model_dir if rank == SERVER else None, [[1, 2, 3]] if rank else None)


def test_server_refuses_a_bad_plan_and_the_client_learns_why(saved) -> None:
    from mpcgen.mpc.launch import run_parties

    with pytest.raises(MpcgenError) as info:
        run_parties(_party_with_bad_client, provider="tfp", args=(str(saved["student"]), BAD_PLAN), timeout=180)
    report = str(info.value)
    assert f"MpcgenError: refused the client's generation plan: {REASON}" in report, report
    assert f"MpcgenError: the server refused the client's generation plan: {REASON}" in report, report
    assert "Connection closed" not in report and "reset by peer" not in report, report


def test_server_refuses_a_bad_plan_cli(saved, tmp_path) -> None:
    """Both parties as ``python -m mpcgen.cli.party`` processes; the client announces a plan its checks would stop."""
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    common = ["generate", "--rendezvous", rendezvous, "--provider", "tfp"]
    patch = (f"import sys; from mpcgen.generation import private; private._client_plan = lambda *a, **k: "
             f"({BAD_PLAN!r}, [], []); from mpcgen.cli.party import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "client.json"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    commands = {"server": [sys.executable, "-m", "mpcgen.cli.party", *common, "--role", "server", "--model",
                           str(saved["student"])],
                "client": [sys.executable, "-c", patch, *common, "--role", "client", "--tokenizer",
                           str(saved["student"]), "--prompt", PROMPT, "--no-progress", "--out", str(out)]}
    procs = {role: subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for role, cmd in commands.items()}
    try:
        errs = {role: (proc.communicate(timeout=240)[1].decode(errors="replace")) for role, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    server = _user_error((procs["server"].returncode, errs["server"]))
    client = _user_error((procs["client"].returncode, errs["client"]))
    assert server == f"error: refused the client's generation plan: {REASON}", server
    assert client == f"error: the server refused the client's generation plan: {REASON}", client
    assert _files(tmp_path) == []  # no --out file, no temp file


# ------------------------------------------------------------------------------------- 6. characters in prompts


def test_prompt_with_bytes_that_are_not_utf8_cli(saved) -> None:
    # Before issue 14: a TypeError traceback from inside the tokenizers library.
    line = _user_error(_generate(saved["student"], prompt=b"name\xff[x]"))
    assert ("prompt 0 has a character that is not valid Unicode ('\\udcff' at position 4, i.e. the byte 0xff that "
            "is not UTF-8)") in line, line


def test_prompt_with_a_lone_surrogate(saved) -> None:
    with pytest.raises(MpcgenError, match=r"prompt 1 has a character that is not valid Unicode \('\\ud800' at "
                                          "position 2\\)"):
        generate_plain(saved["student"], [PROMPT, "ab\ud800"], max_new_tokens=2)
    with pytest.raises(MpcgenError, match="a prompt has a character that is not valid Unicode"):
        encode_client_text(load_tokenizer(saved["student"]), "x\udcff", None)  # a separate-host client




def test_prompt_with_characters_the_tokenizer_maps_to_unknown(saved, tmp_path, capsys) -> None:
    from mpcgen.generate import main

    word_tokenizer().save_pretrained(str(tmp_path / "words"))
    code = main(["--model", str(saved["student"]), "--tokenizer", str(tmp_path / "words"), "--prompt", "name pub",
                 "--prompt", "name ☃ pub", "--plaintext", "--no-progress"])
    line = _user_error((code, capsys.readouterr().err))
    assert "prompt 1 ('name ☃ pub') has characters the tokenizer cannot encode ('☃')" in line, line


def test_byte_level_tokenizer_encodes_every_character(saved) -> None:
    # Policy: mpcgen's tokenizers (and GPT-2's) are byte-level BPE, so every valid character encodes, to its UTF-8
    # bytes when the vocabulary has no merge for it, and decodes back unchanged: no error, nothing dropped.
    tokenizer = load_tokenizer(saved["student"])
    texts = ["name[☃ Café], near[北京]", "emoji 🦅, NUL \x00, zero\u200bwidth"]
    ids = encode_prompts(texts, tokenizer, load_model(saved["student"]).config, max_new_tokens=2)
    assert [decode_output(tokenizer, p[1:-1]) for p in ids] == texts  # [bos] + text + [sep]
    assert tokenizer.unk_token_id not in {t for p in ids for t in p}
