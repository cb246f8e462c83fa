"""Private generation: encrypted greedy generation == plaintext greedy generation of the same model, on a tiny GPT-2
trained here on E2E; who learns what; failures (a killed party, bad input) end with clear errors.

Real processes, real CrypTen, loopback. The model: a scratch GPT-2 (2 layers, d 128, vocab 1024) fine-tuned for 250
steps with ``nlg.finetune`` (~30 s), which writes sensible E2E sentences. ``tokens`` decoding runs it as imported
(vanilla); ``er`` decoding runs its import into ``merge-er-only`` (exact ops + Embedding Resending; untrained for ER,
so its text is poor, but encrypted and plaintext runs must still agree token for token).

The prompts: the largest group of E2E test MRs that share one prompt length (24 of 41 tokens), so that each launch
runs them as ONE batch: a batch pays the rounds of one prompt. The CI matrix covers every provider x weight-mode pair
and each decoding twice in four launches; the other four combinations are ``slow``.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from mpcgen.errors import MpcgenError
from mpcgen.generation import generate_plain, generate_private, generation_party
from mpcgen.generation.inputs import encode_prompts, load_model
from mpcgen.mpc.compat import crypten
from mpcgen.mpc.launch import CLIENT, SERVER, run_parties

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 8  # generated tokens per prompt in the equality tests
# Encrypted and plaintext greedy paths may part only where the plaintext's top-2 logits are closer than this (the
# encrypted logits of this model are within ~0.08 of plaintext; 3x that), and for at most 5% of the prompts.
TIE_MARGIN = 0.25
MAX_DIVERGED = 0.05
MIN_PROMPTS = 20

CI_CASES = [("ttp", "private", "tokens"), ("ttp", "public", "er"), ("tfp", "private", "er"),
            ("tfp", "public", "tokens")]
SLOW_CASES = [("ttp", "private", "er"), ("ttp", "public", "tokens"), ("tfp", "private", "tokens"),
              ("tfp", "public", "er")]


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, data_dir) -> Path:
    """A tiny GPT-2 fine-tuned on E2E (stage 1's CLI, ~30 s on two cores)."""
    from nlg.finetune import main

    out = tmp_path_factory.mktemp("teacher")
    argv = ["--task", "e2e", "--data-dir", str(data_dir), "--model", "gpt2", "--init", "scratch", "--size", "tiny",
            "--vocab-size", "1024", "--max-length", "128", "--limit-train", "4000", "--limit-val", "64",
            "--batch-size", "16", "--max-steps", "250", "--eval-every", "250", "--warmup-steps", "20", "--lr", "3e-3",
            "--num-threads", "2", "--out", str(out), "--resume", "no"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def student_dir(teacher_dir, tmp_path_factory) -> Path:
    """The teacher imported into ``merge-er-only`` and saved as a student (exercises the student loader)."""
    from mpcgen.models import import_hf, save_pretrained

    out = tmp_path_factory.mktemp("student")
    student = import_hf(teacher_dir, preset="merge-er-only")
    save_pretrained(student, out, tokenizer=student.tokenizer)
    return out


@pytest.fixture(scope="session")
def prompts(teacher_dir, data_dir) -> list[str]:
    """At least 20 E2E test MRs with one prompt length (one batch)."""
    from mpcgen.data import load_grouped

    model = load_model(teacher_dir)
    sources = [ex.source for ex in load_grouped("e2e", "test", data_dir)]
    by_length = collections.defaultdict(list)
    for source, ids in zip(sources, encode_prompts(sources, model.tokenizer, model.config, STEPS)):
        by_length[len(ids)].append(source)
    group = max(by_length.values(), key=len)[:24]
    assert len(group) >= MIN_PROMPTS
    return group


def model_for(decoding: str, teacher_dir: Path, student_dir: Path) -> Path:
    return teacher_dir if decoding == "tokens" else student_dir


@pytest.fixture(scope="session")
def references(teacher_dir, student_dir, prompts) -> dict:
    """Plaintext greedy generations per decoding (the same loop, torch tensors), with the top-2 logit margin of
    every step: ``{decoding: (generations, margins (B, STEPS))}``."""
    out = {}
    for dec in ("tokens", "er"):
        model = load_model(model_for(dec, teacher_dir, student_dir))
        logits = []  # tokens: one (B, 1, V) per step; er: one (B, STEPS, V) at the end
        handle = model.lm_head.register_forward_hook(lambda _m, _i, y: logits.append(y))
        try:
            gens = generate_plain(model, prompts, max_new_tokens=STEPS, decoding=dec, batch_size=32)
        finally:
            handle.remove()
        top2 = torch.cat(logits, dim=1).topk(2, dim=-1).values  # (B, STEPS, 2)
        out[dec] = (gens, top2[..., 0] - top2[..., 1])
    return out


# ------------------------------------------------------------------------------------------- plaintext reference


def test_plaintext_cli_matches_hf_greedy(teacher_dir, prompts, capsys) -> None:
    """``--plaintext`` (our model, our loop) == decoding.py's Hugging Face greedy output; ``--json`` last line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpcgen.decoding import generate_texts
    from mpcgen.generate import main

    sources = prompts[:4] + ["name[The Eagle], eatType[pub]", "name[Zizzi], food[French], area[riverside]"]
    hf = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    expected = generate_texts(hf, AutoTokenizer.from_pretrained(teacher_dir), sources, is_encoder_decoder=False,
                              max_new_tokens=12, progress=False)
    argv = ["--model", str(teacher_dir), "--plaintext", "--json", "--max-new-tokens", "12", "--decoding", "tokens",
            "--no-progress"]
    for source in sources:
        argv += ["--prompt", source]
    assert main(argv) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["mode"] == "plaintext"
    assert [r["text"] for r in last["results"]] == expected
    # The trained model writes sentences, not a repeated token.
    assert all(len(set(text.split())) >= 4 for text in expected), expected
    assert all(r["stats"]["rounds"] == 0 and r["stats"]["bytes"] == 0 for r in last["results"])


# ------------------------------------------------------------------------------------------ encrypted == plaintext


@functools.lru_cache(maxsize=None)
def _run_case(case: tuple[str, str, str], teacher_dir: Path, student_dir: Path, prompts: tuple[str, ...]) -> tuple:
    provider, weights, decoding = case
    start = time.perf_counter()
    out = generate_private(model_for(decoding, teacher_dir, student_dir), list(prompts), max_new_tokens=STEPS,
                           decoding=decoding, provider=provider, weights=weights, batch_size=32, timeout=900)
    return out, time.perf_counter() - start


def _check_case(case, teacher_dir, student_dir, prompts, references) -> None:
    provider, weights, decoding = case
    out, seconds = _run_case(case, teacher_dir, student_dir, tuple(prompts))
    ref, margins = references[decoding]
    diverged = []
    for i, (got, want) in enumerate(zip(out, ref)):
        if got.all_tokens != want.all_tokens:
            step = next(t for t, (a, b) in enumerate(zip(got.all_tokens, want.all_tokens)) if a != b)
            diverged.append((i, step, float(margins[i, step]), got.all_tokens, want.all_tokens))
    # Fixed point makes a rare divergence unavoidable: allowed only at a near tie of the plaintext logits, and in at
    # most 5% of the prompts.
    assert all(margin < TIE_MARGIN for _, _, margin, _, _ in diverged), f"{case}: diverged off a near tie: {diverged}"
    assert len(diverged) <= MAX_DIVERGED * len(out), f"{case}: {len(diverged)}/{len(out)} diverged: {diverged}"
    same = {i for i in range(len(out))} - {d[0] for d in diverged}
    assert all(out[i].text == ref[i].text for i in same)
    stats = out[0].stats
    assert (stats.mode, stats.provider, stats.weights, stats.decoding) == ("mpc", provider, weights, decoding)
    assert stats.batch_size == len(prompts) and stats.new_tokens == STEPS and len(stats.per_token_rounds) == STEPS
    assert stats.rounds > 0 and stats.bytes > 0 and (stats.dealer_bytes > 0) == (provider == "ttp")
    per = stats.per_token()
    assert per["rounds"] > 0 and per["bytes"] > 0 and per["seconds"] > 0
    assert {"embed", "linear", "attention", "norm", "lm_head"} <= set(stats.groups)
    if decoding == "tokens":
        assert "sampling" in stats.groups  # the secure argmax
    print(f"{case}: {len(prompts)} prompts x {STEPS} tokens in {seconds:.1f} s; per token {per}")


@pytest.mark.parametrize("case", CI_CASES, ids=["-".join(c) for c in CI_CASES])
def test_private_generation_equals_plaintext(case, teacher_dir, student_dir, prompts, references) -> None:
    _check_case(case, teacher_dir, student_dir, prompts, references)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=["-".join(c) for c in SLOW_CASES])
def test_private_generation_equals_plaintext_rest(case, teacher_dir, student_dir, prompts, references) -> None:
    _check_case(case, teacher_dir, student_dir, prompts, references)


# ------------------------------------------------------------------------------------------------ who learns what


def _spy_party(rank: int, model, prompts):
    """Generation, with every reveal this process asks for recorded (the server must only ever send to the client)."""
    from crypten.mpc import MPCTensor

    calls = []
    original = MPCTensor.get_plain_text

    def recording(self, dst=None):
        calls.append(dst)
        return original(self, dst=dst)

    MPCTensor.get_plain_text = recording
    try:
        result = generation_party(rank, model, prompts, max_new_tokens=3, decoding="tokens")
    finally:
        MPCTensor.get_plain_text = original
    return result, calls, prompts


def test_server_never_holds_client_plaintext(teacher_dir, prompts, references) -> None:
    model = load_model(teacher_dir)
    ids = encode_prompts(prompts[:2], model.tokenizer, model.config, 3)
    del model.tokenizer
    (server, server_calls, server_prompts), (client, _, _) = run_parties(
        _spy_party, provider="tfp", timeout=300, party_args={SERVER: (model, None), CLIENT: (None, ids)})
    assert server_prompts is None  # the server's process never received the prompts
    assert server.tokens is None and server.stats is None and server.reports is None
    assert server_calls and all(dst == CLIENT for dst in server_calls), server_calls  # reveals go to the client
    assert [t[:3] for t in client.tokens] == [r.all_tokens[:3] for r in references["tokens"][0][:2]]


def test_client_error_stops_the_server_cleanly(teacher_dir) -> None:
    model = load_model(teacher_dir)
    del model.tokenizer
    too_long = [[5] * 200]
    with pytest.raises(MpcgenError) as err:
        run_parties(generation_party, provider="tfp", timeout=120,
                    party_args={SERVER: (model, None), CLIENT: (None, too_long)})
    text = str(err.value)
    assert "exceeds the model's 128 positions" in text and "the client stopped before generating" in text


# ------------------------------------------------------------------------------------------------------ failures


def _party_pids(launcher: psutil.Process, want: int, timeout: float = 180.0) -> list[psutil.Process]:
    """The party processes under the launcher (children of its fork server), oldest (rank 0) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parties = [p for child in launcher.children() for p in child.children()]
        if len(parties) >= want:
            return sorted(parties, key=lambda p: p.create_time())
        time.sleep(0.2)
    raise AssertionError("the parties did not start")


def test_killed_party_ends_run_with_clear_error(teacher_dir, prompts) -> None:
    cmd = [sys.executable, "-m", "mpcgen.generate", "--model", str(teacher_dir), "--prompt", prompts[0],
           "--max-new-tokens", "60", "--provider", "ttp", "--timeout", "300"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = bytearray()

    def read() -> None:  # tqdm redraws with "\r", not newlines: read raw chunks
        while chunk := os.read(proc.stderr.fileno(), 4096):
            stderr.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        parties = _party_pids(psutil.Process(proc.pid), want=3)
        deadline = time.monotonic() + 120
        while b"private generation" not in stderr:  # the progress bar: generation has started
            assert time.monotonic() < deadline and proc.poll() is None, stderr.decode(errors="replace")
            time.sleep(0.2)
        time.sleep(1.0)
        killed_at = time.monotonic()
        parties[0].send_signal(signal.SIGKILL)  # the server
        proc.wait(timeout=60)
        elapsed = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    text = stderr.decode(errors="replace")
    assert proc.returncode == 2, text[-2000:]
    assert elapsed < 60
    errors = [line for line in text.splitlines() if line.startswith("error: ")]  # (multiprocessing may warn after)
    assert len(errors) == 1 and errors[0].startswith("error: secure computation failed"), text[-2000:]
    assert "rank 0 (server) was killed by signal SIGKILL" in errors[0], errors[0]
    assert not [p for p in parties if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # no orphans


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_separate_host_roles_over_tcp(teacher_dir, tmp_path, references, prompts) -> None:
    """``--role`` commands meeting at tcp://127.0.0.1:PORT; the client needs only the tokenizer folder."""
    tok_dir = tmp_path / "tokenizer"
    load_model(teacher_dir).tokenizer.save_pretrained(str(tok_dir))
    common = [sys.executable, "-m", "mpcgen.generate", "--rendezvous", f"tcp://127.0.0.1:{_free_port()}",
              "--provider", "ttp", "--timeout", "120"]
    commands = {"server": common + ["--role", "server", "--model", str(teacher_dir)],
                "client": common + ["--role", "client", "--tokenizer", str(tok_dir), "--prompt", prompts[0],
                                    "--max-new-tokens", "4", "--decoding", "tokens", "--json"],
                "dealer": common + ["--role", "dealer"]}
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    procs = {role: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for role, cmd in commands.items()}
    try:
        outputs = {role: proc.communicate(timeout=240) for role, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for role, proc in procs.items():
        assert proc.returncode == 0, f"{role} failed:\n{outputs[role][1][-3000:]}"
    assert outputs["server"][0].strip() == "" and outputs["dealer"][0].strip() == ""  # nothing revealed to them
    last = json.loads(outputs["client"][0].strip().splitlines()[-1])
    (result,) = last["results"]
    assert result["all_tokens"] == references["tokens"][0][0].all_tokens[:4]
    assert result["stats"]["rounds"] > 0 and result["stats"]["bytes"] > 0 and result["stats"]["dealer_bytes"] > 0


# ---------------------------------------------------------------------------------------------------- bad input


def _word_tokenizer():
    """A word-level tokenizer with an unknown token (byte-level BPE never produces one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<sep>", "<unk>", "name", "pub"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   sep_token="<sep>", unk_token="<unk>")


def test_bad_input_errors(teacher_dir, tmp_path) -> None:
    def fails(match, *args, **kwargs):
        with pytest.raises(MpcgenError, match=match):
            generate_private(*args, **kwargs)

    fails("prompt 0 is empty", teacher_dir, ["  "])
    fails("exceeds the model's 128 positions", teacher_dir, ["name[The Eagle] " * 40])
    fails("cannot encode", teacher_dir, ["name ☃ pub"], tokenizer=_word_tokenizer())
    fails("no prompts", teacher_dir, [])
    fails("decoding 'er' .* needs a model trained for it", teacher_dir, ["name[x]"], decoding="er")
    fails("max_new_tokens must be", teacher_dir, ["name[x]"], max_new_tokens=0)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text('{"hello": 1}')
    fails("neither a saved mpcgen student", tmp_path / "junk", ["name[x]"])
    fails("does not exist", tmp_path / "missing", ["name[x]"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        fails("is in use", teacher_dir, ["name[x]"], rendezvous=f"tcp://127.0.0.1:{busy.getsockname()[1]}")
    assert not crypten.is_initialized()


def test_cli_user_errors_are_one_line(teacher_dir, tmp_path, capsys) -> None:
    from mpcgen.generate import main

    assert main(["--model", str(tmp_path), "--prompt", "name[x]"]) == 2
    assert main(["--model", str(teacher_dir)]) == 2
    assert main(["--role", "client", "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), err


def test_one_line_condenses_party_failures() -> None:
    from mpcgen.generate import one_line

    report = ("secure computation failed (provider ttp, 2 parties):\n- rank 0 (server) was killed by signal SIGKILL\n"
              "- rank 1 (client) [after rank 0 failed] raised:\nTraceback (most recent call last):\n  File x\n"
              "RuntimeError: Connection closed by peer\n- rank 2 (dealer): stopped after rank 0 failed")
    assert one_line(report) == ("secure computation failed (provider ttp, 2 parties); rank 0 (server) was killed by "
                                "signal SIGKILL; rank 1 (client) [after rank 0 failed] raised: RuntimeError: "
                                "Connection closed by peer; rank 2 (dealer): stopped after rank 0 failed")


# ------------------------------------------------------------------------------------------------ encoder-decoders


@pytest.mark.parametrize("family,preset,decoding", [("t5", "mpcformer", "tokens"), ("bart", "merge", "er")])
def test_encoder_decoder_private_generation_equals_plaintext(family, preset, decoding) -> None:
    """T5 / BART students (random weights): the encoder runs once on the client's source, the decoder generates;
    the encrypted tokens equal the plaintext loop's wherever the plaintext top-2 margin is not a near tie."""
    from model_helpers import randomise, tiny_config

    from mpcgen.models import build_model

    torch.manual_seed(3)
    config = tiny_config(family, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0).with_preset(preset)
    model = randomise(build_model(config))
    prompts = torch.randint(3, config.vocab_size, (4, 7), generator=torch.Generator().manual_seed(4)).tolist()
    logits = []
    handle = model.lm_head.register_forward_hook(lambda _m, _i, y: logits.append(y))
    try:
        ref = generate_plain(model, prompts, max_new_tokens=5, decoding=decoding)
    finally:
        handle.remove()
    top2 = torch.cat(logits, dim=1).topk(2, dim=-1).values
    margins = top2[..., 0] - top2[..., 1]  # (4, 5)
    out = generate_private(model, prompts, max_new_tokens=5, decoding=decoding, provider="tfp", weights="private",
                           timeout=300)
    for i, (got, want) in enumerate(zip(out, ref)):
        if got.all_tokens != want.all_tokens:
            step = next(t for t, (a, b) in enumerate(zip(got.all_tokens, want.all_tokens)) if a != b)
            assert margins[i, step] < TIE_MARGIN, (i, step, got.all_tokens, want.all_tokens)
    stats = out[0].stats
    assert stats.prompt_tokens == 7 and stats.new_tokens == 5 and stats.batch_size == 4 and stats.fixed_weights
    assert stats.rounds > 0 and stats.setup_bytes > 0
