"""Private generation: encrypted greedy generation == plaintext greedy generation of the same model, on a tiny GPT-2
trained here on E2E, for every decoding (``tokens``, ``er``, ``client``); who learns what; failures (a killed party,
bad input) end with clear errors.

Real processes, real CrypTen, loopback. The model: a scratch GPT-2 (2 layers, d 128, vocab 1024) fine-tuned for 250
steps with ``nlg.finetune`` (~30 s), which writes sensible E2E sentences. ``tokens`` decoding runs it as imported
(vanilla); ``er`` decoding runs its import into ``merge-er-only`` (exact ops + Embedding Resending; untrained for ER,
so its text is poor, but encrypted and plaintext runs must still agree token for token); ``client`` decoding runs
the teacher too.

The prompts: the largest group of E2E test MRs that share one prompt length (24 of 41 tokens), so that each launch
runs them as ONE batch: a batch pays the rounds of one prompt. The CI matrix covers every provider x weight-mode pair
and every decoding in five launches; the other seven combinations are ``slow``.
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
from model_helpers import free_port, run_roles, word_tokenizer

from mpcgen.errors import MpcgenError
from mpcgen.generation import TokenChooser, generate_plain, generate_private, generation_party
from mpcgen.generation.inputs import encode_prompts
from mpcgen.models.loading import load_model
from mpcgen.mpc.compat import crypten
from mpcgen.mpc.launch import run_parties
from mpcgen.mpc.roles import CLIENT, SERVER

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 8  # generated tokens per prompt in the equality tests
# Encrypted and plaintext greedy paths may part only where the plaintext's top-2 logits are closer than this (the
# encrypted logits of this model are within ~0.08 of plaintext; 3x that), and for at most 5% of the prompts.
TIE_MARGIN = 0.25
MAX_DIVERGED = 0.05
MIN_PROMPTS = 20

CI_CASES = [("ttp", "private", "tokens"), ("ttp", "public", "er"), ("tfp", "private", "er"),
            ("ttp", "private", "client"), ("tfp", "public", "client")]
SLOW_CASES = [("ttp", "private", "er"), ("ttp", "public", "tokens"), ("tfp", "private", "tokens"),
              ("tfp", "public", "er"), ("tfp", "public", "tokens"), ("ttp", "public", "client"),
              ("tfp", "private", "client")]


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
    return student_dir if decoding == "er" else teacher_dir


@pytest.fixture(scope="session")
def references(teacher_dir, student_dir, prompts) -> dict:
    """Plaintext greedy generations per decoding (the same loop, torch tensors), with the top-2 logit margin of
    every step: ``{decoding: (generations, margins (B, STEPS))}``."""
    out = {}
    for dec in ("tokens", "er", "client"):
        model = load_model(model_for(dec, teacher_dir, student_dir))
        logits = []  # tokens, client: one (B, 1, V) per step; er: one (B, STEPS, V) at the end
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
    """``--plaintext`` (our model, our loop) == Hugging Face's greedy output (mpcgen.generation.hf), with ``tokens``
    and ``client`` decoding; ``--json`` last line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpcgen.generate import main
    from mpcgen.generation.hf import generate_texts

    sources = prompts[:4] + ["name[The Eagle], eatType[pub]", "name[Zizzi], food[French], area[riverside]"]
    hf = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    expected = generate_texts(hf, AutoTokenizer.from_pretrained(teacher_dir), sources, is_encoder_decoder=False,
                              max_new_tokens=12, progress=False)
    for decoding in ("tokens", "client"):
        argv = ["--model", str(teacher_dir), "--plaintext", "--json", "--max-new-tokens", "12", "--decoding",
                decoding, "--no-progress"]
        for source in sources:
            argv += ["--prompt", source]
        assert main(argv) == 0
        last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert last["mode"] == "plaintext"
        assert [r["text"] for r in last["results"]] == expected, decoding
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
    assert stats.batch_size == len(prompts) and stats.new_tokens == STEPS and len(stats.steps) == STEPS
    total = stats.total
    assert total.rounds > 0 and total.bytes > 0 and (total.dealer_bytes > 0) == (provider == "ttp")
    per = stats.per_token()
    assert per["rounds"] > 0 and per["bytes"] > 0 and per["seconds"] > 0
    assert {"embed", "linear", "attention", "norm", "lm_head"} <= set(stats.groups)
    # the phases are the run: they add up to its rounds and bytes
    assert sum(p.total.rounds for p in stats.phases) == total.rounds
    assert sum(p.total.bytes for p in stats.phases) == pytest.approx(total.bytes)
    if decoding == "tokens":
        assert stats.groups["sampling"].rounds >= STEPS  # the secure argmax
    if decoding == "client":  # a reveal of the newest logits per step, no secure argmax
        assert stats.groups["reveal"].rounds == STEPS and stats.groups["sampling"].rounds == 0
    print(f"{case}: {len(prompts)} prompts x {STEPS} tokens in {seconds:.1f} s; per token {per}")


@pytest.mark.parametrize("case", CI_CASES, ids=["-".join(c) for c in CI_CASES])
def test_private_generation_equals_plaintext(case, teacher_dir, student_dir, prompts, references) -> None:
    _check_case(case, teacher_dir, student_dir, prompts, references)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=["-".join(c) for c in SLOW_CASES])
def test_private_generation_equals_plaintext_rest(case, teacher_dir, student_dir, prompts, references) -> None:
    _check_case(case, teacher_dir, student_dir, prompts, references)


# ------------------------------------------------------------------------------------------------ who learns what


def _spy_party(rank: int, model, prompts, decoding: str, chooser=None):
    """Generation, with every reveal this process asks for and every value it opens recorded."""
    from crypten.mpc import MPCTensor

    calls, opened = [], []
    # Reveals go through mpcgen.mpc.encrypt.reveal (MPCTensor.reveal, then an exact decode); record CrypTen's
    # get_plain_text too, so that no reveal path escapes the spy.
    originals = {name: getattr(MPCTensor, name) for name in ("get_plain_text", "reveal")}
    comm = crypten.communicator.get()
    all_reduce = comm.all_reduce

    def recorder(original):
        def recording(self, dst=None):
            calls.append(dst)
            return original(self, dst=dst)
        return recording

    def opening(tensor, *args, **kwargs):  # an opening: what this party learns of x - mask
        out = all_reduce(tensor, *args, **kwargs)
        opened.extend(t.clone() for t in (out if isinstance(out, list) else [out]))
        return out

    for name, original in originals.items():
        setattr(MPCTensor, name, recorder(original))
    comm.all_reduce = opening
    try:
        result = generation_party(rank, model, prompts, chooser, max_new_tokens=3, decoding=decoding)
    finally:
        for name, original in originals.items():
            setattr(MPCTensor, name, original)
        del comm.all_reduce
    return result, calls, prompts, opened


@pytest.mark.parametrize("decoding", ["tokens", "client"])
def test_server_never_holds_client_plaintext(decoding, teacher_dir, prompts, references) -> None:
    """The server's process never receives the prompts; every reveal it takes part in goes to the client; and no
    value it opens looks like a one-hot (the client's prompt rows, or under ``client`` its chosen tokens)."""
    model = load_model(teacher_dir)
    ids = encode_prompts(prompts[:2], model.tokenizer, model.config, 3)
    del model.tokenizer
    (server, server_calls, server_prompts, opened), (client, *_) = run_parties(
        _spy_party, provider="tfp", timeout=300, args=(),
        party_args={SERVER: (model, None, decoding), CLIENT: (None, ids, decoding)})
    assert server_prompts is None  # the server's process never received the prompts
    assert server.tokens is None and server.stats is None
    assert server_calls and all(dst == CLIENT for dst in server_calls), server_calls  # reveals go to the client
    assert [t[:3] for t in client.tokens] == [r.all_tokens[:3] for r in references[decoding][0][:2]]
    # A plaintext one-hot row is all zeros but one; a masked opening is uniform ring elements (the secure argmax's
    # comparisons open masked bits: about half of them 0)
    one_hot_like = [t for t in opened if t.numel() >= model.config.vocab_size and (t == 0).float().mean() > 0.9]
    assert opened and not one_hot_like, "an opening the server saw looks like a plaintext one-hot"


def test_client_sampling_is_seeded_and_private(teacher_dir, prompts) -> None:
    """Client-side sampling: the same seed gives the same tokens (equal to the plaintext loop's draws), another seed
    other tokens; the chooser never reaches the server."""
    chooser = functools.partial(TokenChooser, temperature=1.0, top_k=20, top_p=0.95)
    few = prompts[:3]
    runs = [generate_private(teacher_dir, few, max_new_tokens=6, decoding="client", chooser=chooser(seed=seed),
                             provider="tfp", timeout=300) for seed in (7, 7, 8)]
    plain = generate_plain(teacher_dir, few, max_new_tokens=6, decoding="client", chooser=chooser(seed=7))
    tokens = [[r.all_tokens for r in run] for run in runs]
    assert tokens[0] == tokens[1]
    assert tokens[0] != tokens[2]
    agree = sum(a == b for a, b in zip(tokens[0], [r.all_tokens for r in plain]))
    assert agree >= 2, (tokens[0], [r.all_tokens for r in plain])  # fixed point may tip one draw, not most
    with pytest.raises(MpcgenError, match="only the client"):
        run_parties(generation_party, provider="tfp", timeout=120,
                    party_args={SERVER: (str(teacher_dir), None, chooser(seed=1)), CLIENT: (None, [[1, 2, 3]])})


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


def test_separate_host_roles_over_tcp(teacher_dir, tmp_path, references, prompts) -> None:
    """``--role`` commands meeting at tcp://127.0.0.1:PORT; the client needs only the tokenizer folder."""
    tok_dir = tmp_path / "tokenizer"
    load_model(teacher_dir).tokenizer.save_pretrained(str(tok_dir))
    common = [sys.executable, "-m", "mpcgen.cli.party", "generate", "--rendezvous",
              f"tcp://127.0.0.1:{free_port()}", "--provider", "ttp", "--timeout", "120"]
    commands = {"server": common + ["--role", "server", "--model", str(teacher_dir)],
                "client": common + ["--role", "client", "--tokenizer", str(tok_dir), "--prompt", prompts[0],
                                    "--max-new-tokens", "4", "--decoding", "tokens", "--no-progress"],
                "dealer": common + ["--role", "dealer"]}
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    outputs = run_roles(commands, env, 240)
    server_out = json.loads(outputs["server"][0].strip().splitlines()[-1])
    assert set(server_out) == {"role", "costs"} and outputs["dealer"][0].strip() == ""  # nothing revealed to them
    last = json.loads(outputs["client"][0].strip().splitlines()[-1])
    (result,) = last["results"]
    assert result["all_tokens"] == references["tokens"][0][0].all_tokens[:4]
    assert result["stats"]["rounds"] > 0 and result["stats"]["bytes"] > 0 and result["stats"]["dealer_bytes"] > 0


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_input_errors(teacher_dir, tmp_path) -> None:
    def fails(match, *args, **kwargs):
        with pytest.raises(MpcgenError, match=match):
            generate_private(*args, **kwargs)

    fails("prompt 0 is empty", teacher_dir, ["  "])
    fails("exceeds the model's 128 positions", teacher_dir, ["name[The Eagle] " * 40])
    fails("cannot encode", teacher_dir, ["name ☃ pub"], tokenizer=word_tokenizer())
    fails("no prompts", teacher_dir, [])
    fails("decoding 'er' .* needs a model trained for it", teacher_dir, ["name[x]"], decoding="er")
    fails("needs decoding 'client'", teacher_dir, ["name[x]"], decoding="tokens", chooser=TokenChooser())
    with pytest.raises(MpcgenError, match="top_p"):
        TokenChooser(temperature=1.0, top_p=0.0)
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

    from mpcgen.cli.party import main as party_main

    assert main(["--model", str(tmp_path), "--prompt", "name[x]"]) == 2
    assert main(["--model", str(teacher_dir)]) == 2
    assert main(["--model", str(teacher_dir), "--prompt", "x", "--decoding", "tokens", "--temperature", "1"]) == 2
    assert party_main(["generate", "--role", "client", "--rendezvous", "tcp://127.0.0.1:1", "--prompt", "x"]) == 2
    assert party_main(["generate", "--role", "server", "--rendezvous", "tcp://127.0.0.1:1", "--model",
                       str(teacher_dir), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("error: ") for line in err), err


def test_one_line_condenses_party_failures() -> None:
    from mpcgen.cli import one_line

    report = ("secure computation failed (provider ttp, 2 parties):\n- rank 0 (server) was killed by signal SIGKILL\n"
              "- rank 1 (client) [after rank 0 failed] raised:\nTraceback (most recent call last):\n  File x\n"
              "RuntimeError: Connection closed by peer\n- rank 2 (dealer): stopped after rank 0 failed")
    assert one_line(report) == ("secure computation failed (provider ttp, 2 parties); rank 0 (server) was killed by "
                                "signal SIGKILL; rank 1 (client) [after rank 0 failed] raised: RuntimeError: "
                                "Connection closed by peer; rank 2 (dealer): stopped after rank 0 failed")


# ------------------------------------------------------------------------------------------------ encoder-decoders


@pytest.mark.parametrize("family,preset,decoding,weights", [("t5", "mpcformer", "tokens", "private"),
                                                            ("bart", "merge", "er", "private"),
                                                            ("t5", "mpcformer", "client", "public"),
                                                            ("bart", "vanilla", "client", "private")])
def test_encoder_decoder_private_generation_equals_plaintext(family, preset, decoding, weights) -> None:
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
    out = generate_private(model, prompts, max_new_tokens=5, decoding=decoding, provider="tfp", weights=weights,
                           timeout=300)
    for i, (got, want) in enumerate(zip(out, ref)):
        if got.all_tokens != want.all_tokens:
            step = next(t for t, (a, b) in enumerate(zip(got.all_tokens, want.all_tokens)) if a != b)
            assert margins[i, step] < TIE_MARGIN, (i, step, got.all_tokens, want.all_tokens)
    stats = out[0].stats
    assert stats.prompt_tokens == 7 and stats.new_tokens == 5 and stats.batch_size == 4
    assert stats.fixed_weights == (weights == "private") and stats.total.rounds > 0
    assert (stats.setup.online_bytes > 0) == (weights == "private")
