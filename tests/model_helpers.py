"""Helpers shared by the tests: tiny models (vocab 99, d 32, 2 layers, 4 heads), per-host party commands and the
scripts/ folder's modules."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType

import torch
import transformers as tf

from mpcgen import ops
from mpcgen.models import ModelConfig


def tiny_hf(name: str, **kw):
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    if name.startswith("t5"):
        gated = name == "t5-gated"
        cfg = tf.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          decoder_start_token_id=0, feed_forward_proj="gated-gelu" if gated else "relu",
                          tie_word_embeddings=not gated)
        return tf.T5ForConditionalGeneration(cfg).eval()
    cfg = tf.BartConfig(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                        scale_embedding=True)
    model = tf.BartForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()  # zero by default: make the import of it visible
    return model


def tiny_config(family: str, **kw) -> ModelConfig:
    common = dict(vocab_size=99, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    if family == "gpt2":
        base = ModelConfig(**common)
    elif family == "t5":
        base = ModelConfig(arch="encoder-decoder", family="t5", n_encoder_layer=2, d_kv=8, d_ff=64, norm="rmsnorm",
                           bias=False, scale_attention=False, relative_attention_num_buckets=8,
                           relative_attention_max_distance=16, activation="relu", scale_decoder_outputs=True,
                           **common)
    else:
        base = ModelConfig(arch="encoder-decoder", family="bart", n_encoder_layer=2, d_ff=64, pre_norm=False,
                           final_norm=False, position_offset=2, scale_embedding=True, layernorm_embedding=True,
                           final_logits_bias=True, gelu_variant="erf", **common)
    return dataclasses.replace(base, **kw)


def randomise(model):
    """Realistic scales (O(1) hidden states) and non-uniform constant attention."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "const_logits" in name:
                p.normal_()
            elif name in ("wte.weight", "shared.weight", "stack.wpe.weight"):
                p.normal_(std=1.0 / model.embed_scale)
    return model.eval()


def inputs(config: ModelConfig, t: int = 6):
    ids = torch.randint(0, 99, (2, t))
    if config.arch == "decoder":
        return {"input_ids": ids}
    return {"input_ids": ids, "decoder_input_ids": ids[:, :4]}


def secret_inputs(crypten, kw):
    def enc(ids):
        return crypten.cryptensor(ops.one_hot(ids, 99))

    if "decoder_input_ids" in kw:
        return {"one_hot": enc(kw["input_ids"]), "decoder_one_hot": enc(kw["decoder_input_ids"])}
    return {"one_hot": enc(kw["input_ids"])}


def run_roles(commands: dict[str, list[str]], env: dict[str, str], timeout: float) -> dict[str, tuple[str, str]]:
    """Start one process per role (server, client, dealer), wait for all, kill any left on the way out; every role
    must exit 0. Returns ``{role: (stdout, stderr)}``."""
    import subprocess

    procs = {role: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for role, cmd in commands.items()}
    try:
        outputs = {role: proc.communicate(timeout=timeout) for role, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for role, proc in procs.items():
        assert proc.returncode == 0, f"{role} failed:\n{outputs[role][1][-3000:]}"
    return outputs


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def word_tokenizer():
    """A word-level tokenizer with an unknown token (byte-level BPE never produces one; word-piece ones can)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<sep>", "<unk>", "name", "pub"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   sep_token="<sep>", unk_token="<unk>")


def new_ca(folder: Path) -> Path:
    """A deployment's CA and per-party certificates in ``folder`` (``python -m mpcgen.certs init``)."""
    from mpcgen.certs import main as certs_main

    assert certs_main(["init", "--out", str(folder)]) == 0
    return folder


def tiny_student(folder: Path, preset: str, *, seed: int, n_positions: int) -> Path:
    """A random tiny GPT-2 student of ``preset`` saved in ``folder`` (a per-host party's ``--model``)."""
    from mpcgen.models import build_model, save_pretrained

    torch.manual_seed(seed)
    save_pretrained(build_model(tiny_config("gpt2", preset=preset, n_positions=n_positions)), folder)
    return folder


def party_cmd(job: str, role: str, rendezvous: str, certs: Path | None, *extra: str) -> list[str]:
    """``python -m mpcgen.cli.party JOB`` for ``role`` (ttp provider), with the role's TLS files from ``certs``."""
    import sys

    cmd = [sys.executable, "-m", "mpcgen.cli.party", job, "--role", role, "--rendezvous", rendezvous,
           "--provider", "ttp", *extra]
    if certs is not None:
        from mpcgen.certs import tls_flags

        cmd += tls_flags(certs, role)
    return cmd


def seconds_since_log_line(log: str, marker: str) -> float:
    """Seconds from the time stamp of ``log``'s first line holding ``marker`` (``setup_logging``'s format) to now:
    a party's own clock for an interval, which process start-up on a loaded machine does not inflate."""
    import time

    stamp = next(line for line in log.splitlines() if marker in line)[:23]
    return time.time() - time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) - float("0." + stamp[20:23])


def alive(pids: list[int]) -> list[int]:
    """The processes of ``pids`` still running (zombies count as gone)."""
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
