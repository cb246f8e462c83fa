"""Students: HF import parity, presets on both backends, K/V cache, constant attention, save/load, config checks."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers as tf

from mpcgen import ops
from mpcgen.errors import MpcgenError
from mpcgen.models import PRESETS, ModelConfig, build_model, from_pretrained, import_hf
from mpcgen.models.layers import AttentionCore
from model_helpers import inputs, randomise, secret_inputs, tiny_config, tiny_hf

logging.getLogger("transformers").setLevel(logging.ERROR)
KINDS = ["softmax", "2quad", "2quad-lite", "2relu", "thex", "constant"]


def batch(t: int = 7):
    ids = torch.randint(0, 99, (2, t))
    mask = torch.ones(2, t, dtype=torch.long)
    mask[1, t - 2:] = 0  # the second row is shorter
    return ids, mask


@pytest.mark.parametrize("name", ["gpt2", "t5", "t5-gated", "bart"])
def test_import_vanilla_matches_hf(name):
    hf = tiny_hf(name)
    student = import_hf(hf, preset="vanilla")
    ids, mask = batch()
    with torch.no_grad():
        if name == "gpt2":
            ref = hf(ids, attention_mask=mask).logits
            got = student(ids, attention_mask=mask).logits
            diff = (ref - got)[mask.bool()].abs().max().item()  # padded positions are not compared
        else:
            dec = torch.randint(0, 99, (2, 5))
            ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
            got = student(ids, attention_mask=mask, decoder_input_ids=dec).logits
            diff = (ref - got).abs().max().item()
    assert diff <= 1e-4


def test_import_refuses_unsupported():
    model = tf.BertModel(tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=64))
    with pytest.raises(MpcgenError, match="supported architectures"):
        import_hf(model)


def test_import_preset_keeps_weights_and_inits_rest():
    hf = tiny_hf("gpt2")
    student = import_hf(hf, preset="merge")
    assert student.config.preset == "merge" and student.config.activation == "quad"
    torch.testing.assert_close(student.stack.blocks[0].attn.v.weight, hf.transformer.h[0].attn.c_attn.weight[:, 64:])
    assert not hasattr(student.stack.blocks[0].attn, "q")  # constant layers have no Q/K
    assert torch.equal(student.stack.blocks[0].attn.core.const_logits, torch.zeros(1, 64, 64))


# -------------------------------------------------------------------------------------------- tiny configs, presets


@pytest.mark.parametrize("family", ["gpt2", "t5", "bart"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_plain_and_secret(crypten, family, preset):
    config = tiny_config(family).with_preset(preset)
    model = randomise(build_model(config))
    kw = inputs(config)
    with torch.no_grad():
        ref = model(**kw).logits
    got = model(**secret_inputs(crypten, kw), use_cache=False).logits.get_plain_text()
    assert torch.isfinite(ref).all()
    diff = (got - ref).abs().max().item()
    assert diff <= 3e-2 * max(1.0, ref.abs().max().item()), diff


# ------------------------------------------------------------------------------------------------------- K/V cache


@pytest.mark.parametrize("family", ["gpt2", "t5", "bart"])
@pytest.mark.parametrize("kind", KINDS + ["merge"])
def test_incremental_decoding_equals_full(family, kind):
    config = tiny_config(family, attention=kind) if kind != "merge" else tiny_config(family).with_preset("merge")
    model = randomise(build_model(config))
    kw = inputs(config, t=6)
    with torch.no_grad():
        full = model(**kw).logits
        key = "input_ids" if config.arch == "decoder" else "decoder_input_ids"
        ids = kw.pop(key)
        out = model(**kw, **{key: ids[:, :2]}, use_cache=True)
        steps = [out.logits]
        extra = {} if config.arch == "decoder" else {"encoder_hidden": out.encoder_hidden}
        for t in range(2, ids.size(1)):
            out = model(**({} if extra else kw), **extra, **{key: ids[:, t:t + 1]}, past=out.past)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_constant_attention_matches_loops():
    torch.manual_seed(3)
    core = AttentionCore("constant", scale=1.0, heads=2, n_q=6, n_k=6)
    with torch.no_grad():
        core.const_logits.normal_()
    v = torch.randn(1, 2, 4, 3)  # (B, h, S, hs)
    start, t = 2, 2  # query positions 2, 3 over keys 0..3 (as with a cache)
    mask = torch.tril(torch.ones(6, 6))[start:start + t, :4].view(1, 1, t, 4)
    got = core(None, None, v, mask, start=start, q_len=t)
    m = core.const_logits.detach()
    for h in range(2):
        for i in range(t):
            row = start + i
            z = sum(torch.exp(m[h, row, c]) for c in range(6))  # all columns, before the mask
            ref = sum(torch.exp(m[h, row, s]) / z * v[0, h, s] for s in range(row + 1))  # no renormalising
            torch.testing.assert_close(got[0, h, i], ref, atol=1e-6, rtol=0)
    frozen = AttentionCore("constant", scale=1.0, heads=2, n_q=6, n_k=6)
    frozen.load_state_dict(core.state_dict())
    frozen.freeze()
    assert "const_weights" in dict(frozen.named_parameters())
    torch.testing.assert_close(frozen(None, None, v, mask, start=start, q_len=t), got)


def test_attention_layers_override_and_resend():
    config = tiny_config("gpt2", attention_layers=["2quad", "constant"], embedding_resend=True)
    model = randomise(build_model(config))
    assert model.stack.blocks[0].attn.core.kind == "2quad" and model.stack.blocks[1].attn.core.kind == "constant"
    h = torch.randn(2, 1, 32)
    torch.testing.assert_close(model.resend_embedding(h, 3), h + model.stack.wpe.weight[3])
    with torch.no_grad():
        prefix = model(torch.randint(0, 99, (2, 3)), use_cache=True)
        resent = model(inputs_embeds=prefix.hidden[:, -1:], past=prefix.past)  # ER step at position 3
    assert resent.logits.shape == (2, 1, 99) and resent.past.length == 4


def test_too_long_sequence_raises():
    model = build_model(tiny_config("gpt2"))
    with pytest.raises(MpcgenError, match="n_positions=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(MpcgenError, match="needs past"):
        model(torch.zeros(1, 2, dtype=torch.long), start_pos=3)


# ------------------------------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("family", ["gpt2", "bart"])
def test_save_load_bit_exact(tmp_path, family):
    model = randomise(build_model(tiny_config(family).with_preset("thex")))
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert loaded.config == model.config
    sa, sb = model.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_refuses_bad_checkpoints(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build_model(tiny_config("gpt2"))
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_embed": 32}))
    with pytest.raises(MpcgenError, match="unknown model config keys"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(tmp_path / "model.safetensors"))
    save_file({**tensors, "extra.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(MpcgenError, match="unknown tensors"):
        from_pretrained(tmp_path)
    save_file({**tensors, "wte.weight": torch.zeros(98, 32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(MpcgenError, match="wte.weight has shape"):
        from_pretrained(tmp_path)


def test_config_validation():
    with pytest.raises(MpcgenError, match="preset='fast'"):
        tiny_config("gpt2").with_preset("fast")
    with pytest.raises(MpcgenError, match=r"activation='gleu'.*\['gelu'"):
        tiny_config("gpt2", activation="gleu")
    with pytest.raises(MpcgenError, match="attention_layers"):
        tiny_config("gpt2", attention_layers=["softmax"])
    with pytest.raises(MpcgenError, match="family='t5' needs arch"):
        ModelConfig(family="t5")
    assert ModelConfig.from_dict(tiny_config("t5").to_dict()) == tiny_config("t5")
