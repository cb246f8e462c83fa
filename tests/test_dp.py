"""DP-SGD: ghost clipping against per-example clipping done the slow way, the private step with zero noise, and a
resumed DP run reporting the epsilon of an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from torch import nn

from mpcgen import train as T
from mpcgen.errors import MpcgenError
from mpcgen.train.loop import Trainer

B, SEQ = 6, 40


def tiny(family: str) -> nn.Module:
    """Vocab 99, d 32, 2 layers, no dropout (so per-example passes see the same function), tied embeddings;
    BART with its scaled word embedding and a padding row."""
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=98, eos_token_id=98)
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "t5":
        cfg = tf.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                          decoder_start_token_id=0)
        model = tf.T5ForConditionalGeneration(cfg)
    else:
        cfg = tf.BartConfig(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0,
                            attention_dropout=0.0, activation_dropout=0.0, max_position_embeddings=64,
                            scale_embedding=True)
        model = tf.BartForConditionalGeneration(cfg)
    T.freeze_for_dp(model, family)
    return model.train()


def rows(family: str, n: int) -> list[dict[str, list[int]]]:
    """Examples of different lengths, prompt tokens unlabelled as in training."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        length = int(torch.randint(SEQ // 3, SEQ + 1, (1,), generator=gen))
        ids = torch.randint(3, 99, (length,), generator=gen).tolist()
        labels = list(ids) if family != "gpt2" else [-100] * (length // 3) + ids[length // 3 :]
        out.append({"input_ids": ids, "labels": labels})
    return out


def batch_of(family: str, examples: list[dict]) -> dict[str, torch.Tensor]:
    pad = 1 if family == "bart" else 0
    return T.Collator(pad)(examples)


def reference_clipped_sum(model: nn.Module, family: str, batch: dict, max_norm: float) -> tuple[dict, list[float]]:
    """The slow, obviously correct DP-SGD gradient: one backward pass per example, clip its whole gradient (the tied
    weight's gradient is autograd's sum over both uses), sum."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    norms = []
    for b in range(batch["input_ids"].shape[0]):
        one = {k: v[b : b + 1] for k, v in batch.items()}
        loss = T.per_sample_loss(model, one, is_encoder_decoder=family != "gpt2")[0]
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params.values())]
        norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
        norms.append(norm)
        factor = min(1.0, max_norm / (norm + 1e-6))
        for name, g in zip(params, grads):
            total[name] += factor * g
    return total, norms


def assert_grads_close(model: nn.Module, expected: dict, *, scale: float = 1.0) -> None:
    for name, p in model.named_parameters():
        if p.requires_grad:
            got = p.grad * scale
            err = float((got - expected[name]).abs().max())
            assert err <= 1e-5 + 1e-4 * float(expected[name].abs().max()), (name, err)


@pytest.mark.parametrize("family", ["gpt2", "t5", "bart"])
def test_ghost_clipping_equals_per_example_clipping(family):
    model = tiny(family)
    batch = batch_of(family, rows(family, B))
    reference_model = tiny(family)
    reference_model.load_state_dict(model.state_dict())
    _, norms = reference_clipped_sum(reference_model, family, batch, 1e9)
    max_norm = sorted(norms)[B // 2]  # about half the examples get clipped
    expected, _ = reference_clipped_sum(reference_model, family, batch, max_norm)
    clipper = T.GhostClipper(model, max_norm)
    result = clipper.backward(T.per_sample_loss(model, batch, is_encoder_decoder=family != "gpt2"))
    torch.testing.assert_close(result.norms, torch.tensor(norms), rtol=1e-4, atol=1e-6)
    assert 0 < int((result.factors < 1).sum()) < B
    assert_grads_close(model, expected)
    if family == "gpt2":
        # The tied embedding: one parameter, the embedding's and the LM head's uses in one per-example norm.
        assert model.lm_head.weight is model.transformer.wte.weight
        # T = 40 > 32 * 96 / (32 + 96): the Conv1D weights take the materialised path, the tied weight the ghost one.
        assert "transformer.h.0.attn.c_attn.weight" in result.materialised
        assert "transformer.wte.weight" not in result.materialised


def test_ghost_clipping_under_bf16_autocast_matches_per_example_clipping():
    """``--bf16 --dp``: the forward runs in bf16 and the clipper computes norms and the clipped sum in float32 from
    the same captured tensors; both agree with per-example clipping of the bf16 model to bf16's precision, and the
    first backward's self-check (against autograd's bf16 gradients) passes."""
    model = tiny("gpt2")
    batch = batch_of("gpt2", rows("gpt2", B))
    reference_model = tiny("gpt2")
    reference_model.load_state_dict(model.state_dict())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        _, norms = reference_clipped_sum(reference_model, "gpt2", batch, 1e9)
        max_norm = sorted(norms)[B // 2]
        expected, _ = reference_clipped_sum(reference_model, "gpt2", batch, max_norm)
        clipper = T.GhostClipper(model, max_norm)
        losses = T.per_sample_loss(model, batch, is_encoder_decoder=False)
    with torch.no_grad():
        full = T.per_sample_loss(tiny_copy(model), batch, is_encoder_decoder=False)
    assert not torch.equal(losses.detach(), full), "autocast did not change the forward: the test tests nothing"
    result = clipper.backward(losses)
    torch.testing.assert_close(result.norms, torch.tensor(norms), rtol=3e-2, atol=1e-4)
    assert float((result.factors * result.norms).max()) <= max_norm * (1 + 1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad.dtype == torch.float32
            err = float((p.grad - expected[name]).abs().max())
            assert err <= 3e-2 * float(expected[name].abs().max()) + 1e-4, (name, err)


def tiny_copy(model: nn.Module) -> nn.Module:
    copy = tiny("gpt2")
    copy.load_state_dict(model.state_dict())
    return copy


@pytest.mark.parametrize("clipping", ["ghost", "per-sample"])
def test_private_step_with_zero_noise_applies_the_clipped_mean(clipping):
    """The whole private step (clipping, Opacus' optimizer with noise 0, SGD lr 1): w <- w - clipped sum / B."""
    model = tiny("gpt2")
    data = rows("gpt2", 2 * B)
    batch = batch_of("gpt2", data[:B])
    reference_model = tiny("gpt2")
    reference_model.load_state_dict(model.state_dict())
    expected, norms = reference_clipped_sum(reference_model, "gpt2", batch, 0.5)
    assert max(norms) > 0.5
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    loader = torch.utils.data.DataLoader(data, batch_size=B, collate_fn=T.Collator(0))
    plan = T.DPPlan(target_epsilon=8.0, delta=1e-5, max_grad_norm=0.5, sample_rate=0.5, steps=1,
                    noise_multiplier=0.0, accountant="rdp", clipping=clipping)
    private = T.make_private(model, optimizer, loader, plan=plan, distributed=False)
    if private.clipper is not None:
        private.clipper.backward(T.per_sample_loss(private.model, batch, is_encoder_decoder=False))
    else:
        T.sequence_loss(private.model, batch, is_encoder_decoder=False, per_sample=True)[0].backward()
    private.optimizer.step()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(before[name] - p.detach(), expected[name] / B, rtol=1e-4, atol=1e-6)
    assert private.accountant.history == [(0.0, 0.5, 1)]


class _Functional(nn.Module):
    """A Linear whose weight is also used outside the Linear's forward: hooks alone would miss that use."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + nn.functional.linear(x, self.lin.weight)


def test_ghost_clipping_refuses_uses_it_cannot_see():
    model = _Functional().train()
    clipper = T.GhostClipper(model, 1.0)
    x = torch.randn(3, 5, 4)
    with pytest.raises(MpcgenError, match="lin.weight.*outside the forward"):
        clipper.backward(model(x).pow(2).sum((1, 2)))
    with pytest.raises(MpcgenError, match="no rule for Conv2d.*per-sample"):
        T.GhostClipper(nn.Sequential(nn.Linear(3, 3), nn.Conv2d(1, 1, 3)), 1.0)


# -- resume -----------------------------------------------------------------------------------------------------

TINY = ["--task", "e2e", "--init", "scratch", "--size", "tiny", "--limit-train", "64", "--limit-val", "16",
        "--batch-size", "8", "--warmup-steps", "2", "--vocab-size", "512", "--num-threads", "1", "--model", "gpt2",
        "--max-steps", "8", "--eval-every", "4", "--dp", "--target-epsilon", "5"]


class _Stop(Exception):
    """Stands for the process being killed right after the resume state of step 4 was written."""


def test_resumed_dp_run_reports_the_epsilon_of_an_uninterrupted_run(capsys, monkeypatch, tmp_path):
    from nlg.finetune import main

    drawn: list[list[torch.Tensor]] = []  # each run's Poisson batches
    batches = Trainer._batches

    def recording(self, dp_loader):
        drawn.append([])
        for batch in batches(self, dp_loader):
            drawn[-1].append(batch["input_ids"])
            yield batch

    monkeypatch.setattr(Trainer, "_batches", recording)
    assert main([*TINY, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    save = Trainer._save_resume

    def save_then_die(self, optimizer):
        save(self, optimizer)
        if self.state["step"] == 4:
            raise _Stop

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save_resume", save_then_die)
        with pytest.raises(_Stop):
            main([*TINY, "--out", str(tmp_path / "split")])
    capsys.readouterr()
    halfway = json.loads((tmp_path / "split" / "resume" / "state.json").read_text())
    assert halfway["step"] == 4 and len(halfway["accountant_history"]) == 1
    assert main([*TINY, "--out", str(tmp_path / "split")]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert resumed["start_step"] == 4 and resumed["step"] == whole["step"] == 8
    # The resume state holds the RNG, so the resumed run goes on drawing fresh Poisson batches (and noise) instead
    # of replaying the first ones, which the accountant would wrongly count as independent. (Not bit-identical to
    # the uninterrupted run: the new DataLoader iterator draws its base seed from the restored stream.)
    whole_batches, before, after = drawn
    assert all(torch.equal(a, b) for a, b in zip(before, whole_batches[:4])) and len(after) == 4
    assert not any(torch.equal(a, b) for a, b in zip(after, before))
    assert resumed["epsilon"] == pytest.approx(whole["epsilon"], rel=1e-9)
    states = [json.loads((tmp_path / d / "trainer_state.json").read_text()) for d in ("whole", "split")]
    dp = json.loads((tmp_path / "whole" / "training_args.json").read_text())["dp"]
    for state in states:
        assert state["accountant"]["history"] == [[dp["noise_multiplier"], dp["sample_rate"], 8]]
        assert state["epsilon"] == pytest.approx(whole["epsilon"], rel=1e-9)
    assert dp["clipping"] == "ghost"
    tf.AutoModelForCausalLM.from_pretrained(tmp_path / "split")  # saved in the HF layout (Conv1D as it was)


def test_epsilon_of_a_split_history_is_the_whole_one():
    """Both accountants: (sigma, q, 4) then 4 more steps is (sigma, q, 8)."""
    for kind in ("rdp", "prv"):
        accountant = T.make_accountant(kind, [(1.1, 0.01, 4)])
        for _ in range(4):
            accountant.step(noise_multiplier=1.1, sample_rate=0.01)
        whole = T.epsilon_from_history(kind, [(1.1, 0.01, 8)], 1e-5)
        assert accountant.history == [(1.1, 0.01, 8)]
        assert float(accountant.get_epsilon(delta=1e-5)) == pytest.approx(whole, rel=1e-9)


@pytest.mark.parametrize("chunk", [None, 4, 1])
def test_physical_chunks_add_up_to_the_whole_batch_clipped_sum(chunk):
    """``Trainer._ghost_backward``: a Poisson batch cut into physical chunks leaves in p.grad exactly the clipped sum
    of the whole batch (the slow reference), and returns the batch's mean loss."""
    from types import SimpleNamespace

    from mpcgen.train.clipping import GhostClipper

    model = tiny("gpt2")
    batch = batch_of("gpt2", rows("gpt2", B))
    reference_model = tiny("gpt2")
    reference_model.load_state_dict(model.state_dict())
    expected, norms = reference_clipped_sum(reference_model, "gpt2", batch, 0.5)
    assert max(norms) > 0.5 and min(norms) < 50  # some examples clipped
    plan = T.DPPlan(8.0, 1e-5, 0.5, 0.5, 1, 0.0, "rdp", physical_batch_size=chunk)
    trainer = SimpleNamespace(plan=SimpleNamespace(dp=plan, bf16=False), model=model, enc_dec=False,
                              private=SimpleNamespace(clipper=GhostClipper(model, 0.5)))
    loss = Trainer._ghost_backward(trainer, batch, 0, None)
    assert_grads_close(model, expected)
    with torch.no_grad():
        mean = T.per_sample_loss(reference_model, batch, is_encoder_decoder=False).mean()
    assert float(loss) == pytest.approx(float(mean), rel=1e-5)
