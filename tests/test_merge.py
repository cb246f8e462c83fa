"""MERGE's merged linear ops: merged == unmerged, refusals, save/load and MPC of a merged model."""

from __future__ import annotations

import pytest
import torch

from mpcgen.errors import MpcgenError
from mpcgen.models import build_model, from_pretrained
from mpcgen.models.merge import merge_model
from model_helpers import inputs, randomise, secret_inputs, tiny_config


def perturbed(config):
    """A model whose norms, biases and constant attention are far from their inits (so every fold matters)."""
    model = randomise(build_model(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(std=0.5).add_(1.0 if name.endswith("weight") else 0.0)
    return model


@pytest.mark.parametrize("family", ["gpt2", "t5", "bart"])
@pytest.mark.parametrize("preset", ["merge", "merge-mm-only"])
def test_merged_equals_unmerged(family, preset):
    model = perturbed(tiny_config(family).with_preset(preset))
    merged = merge_model(model)
    assert merged.config.merged and merged.config.constant_frozen and not model.config.merged
    block = merged.stack.blocks[0] if family == "gpt2" else merged.decoder.blocks[0]
    assert not hasattr(block.attn, "o")  # W_V W_O folded into one product
    if family != "bart":  # pre-norm: the affine norms went into the linears
        assert block.norm1.kind == "none"
    kw = inputs(model.config)
    with torch.no_grad():
        torch.testing.assert_close(merged(**kw).logits, model(**kw).logits, atol=1e-4, rtol=1e-4)


def test_centered_norm_and_mixed_layers_fold():
    config = tiny_config("gpt2", merge_linear=True, norm="centered", activation="quad",
                         attention_layers=["2quad", "constant"])
    model = perturbed(config)
    merge_model(model)  # raises if not exact


@pytest.mark.parametrize("family", ["gpt2", "t5", "bart"])
def test_lite_merges_exactly(family):
    model = randomise(build_model(tiny_config(family).with_preset("lite")))
    merged = merge_model(model)  # raises if not exact
    block = merged.stack.blocks[0] if family == "gpt2" else merged.decoder.blocks[0]
    assert block.attn.core.kind == "2quad-lite" and hasattr(block.attn, "o")  # only the norms fold


def test_merge_check_falls_back_to_shorter_inputs_and_refuses_when_none_is_finite(monkeypatch):
    import mpcgen.models.merge as M

    model = randomise(build_model(tiny_config("gpt2").with_preset("lite")))
    calls = []
    forward = type(model).forward

    def diverging_on_long_inputs(self, *args, **kwargs):  # like a lite student on random ids far from its data
        out = forward(self, *args, **kwargs)
        calls.append(kwargs["input_ids"].size(1))
        if kwargs["input_ids"].size(1) > 4:
            out.logits = out.logits * float("nan")
        return out

    monkeypatch.setattr(type(model), "forward", diverging_on_long_inputs)
    merge_model(model)
    assert calls[:2] == [8, 4]
    monkeypatch.setattr(M, "_CHECK_INPUTS", ((0, 8),))
    with pytest.raises(MpcgenError, match="non-finite logits on every check input"):
        merge_model(model)


def test_merging_refusals():
    with pytest.raises(MpcgenError, match="cannot fold"):
        merge_model(build_model(tiny_config("gpt2", merge_linear=True, attention="constant")))  # layernorm
    with pytest.raises(MpcgenError, match="merge_linear=True"):
        merge_model(build_model(tiny_config("gpt2").with_preset("thex")))
    merged = merge_model(perturbed(tiny_config("gpt2").with_preset("merge")))
    with pytest.raises(MpcgenError, match="already merged"):
        merge_model(merged)


def test_merged_save_load_cache_and_secret(tmp_path, crypten):
    model = perturbed(tiny_config("gpt2").with_preset("merge"))
    merged = merge_model(model)
    merged.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    sa, sb = merged.state_dict(), loaded.state_dict()
    assert loaded.config.merged and all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.randint(0, 99, (2, 5))
    with torch.no_grad():
        full = loaded(ids).logits
        out = loaded(ids[:, :3], use_cache=True)
        step = loaded(ids[:, 3:], past=out.past)
    torch.testing.assert_close(torch.cat([out.logits, step.logits], 1), full, atol=1e-5, rtol=1e-5)
    got = loaded(**secret_inputs(crypten, {"input_ids": ids}), use_cache=False).logits.get_plain_text()
    assert (got - full).abs().max().item() <= 3e-2 * max(1.0, full.abs().max().item())
