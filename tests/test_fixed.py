"""Fixed-operand weights (mpcgen.mpc.fixed): one mask per weight, distinct across weights, opened once per session;
products agree with fresh Beaver triples; the server sees only masked client data; generation's per-token traffic
drops to the activations' size; each party's state lives in the session that init_party installs. Real two-party
CrypTen runs on loopback."""

from __future__ import annotations

import functools

import pytest
import torch

from mpcgen.mpc import fixed
from mpcgen.mpc.launch import run_parties
from mpcgen.mpc.roles import CLIENT, PROVIDERS, SERVER

SCALE = 1 << 16


def _weights_party(rank: int, fixed_on: bool) -> dict:
    """Three identical weights and a gain, shared by the server; the client's one-hot rows go through a lookup,
    a gain, a (masked, sliced) left product and a tied-transpose product, as the models use weights."""
    from crypten.mpc.primitives import beaver

    from mpcgen.mpc.compat import crypten
    from mpcgen.mpc.encrypt import encrypt_input, encrypt_model
    from mpcgen.mpc.meter import CostMeter

    session = fixed.session()  # installed by init_party, fresh for this launch
    assert session.counters == dict.fromkeys(fixed.COUNTER_NAMES, 0)
    assert all(getattr(beaver, op)._fixed_session is session for op in fixed.OPS)
    comm = crypten.communicator.get()
    opened: list[torch.Tensor] = []
    original = comm.all_reduce
    assert "all_reduce" not in vars(comm)

    def recording(tensor, *args, **kwargs):  # what this party learns from every opening
        out = original(tensor, *args, **kwargs)
        opened.extend(t.clone() for t in (out if isinstance(out, list) else [out]))  # batched: a list
        return out

    comm.all_reduce = recording
    module = torch.nn.Module()
    table = torch.arange(24, dtype=torch.float32).view(6, 4) / 10
    for name in ("w1", "w2", "w3"):  # equal values: their openings F = W - B differ only if their masks B do
        setattr(module, name, torch.nn.Parameter(table.clone() if rank == SERVER else torch.zeros(6, 4)))
    module.gain = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]) if rank == SERVER else torch.zeros(4))
    with crypten.no_grad():
        encrypt_model(module, weights="private", fixed=fixed_on)
        setup_openings = [t for t in opened]
        ids = torch.tensor([[1, 4, 2]])
        one_hot = torch.nn.functional.one_hot(ids, 6).float() if rank == CLIENT else None
        x = encrypt_input(one_hot, (1, 3, 6), src=CLIENT)
        before = session.counters["products"]
        meter = CostMeter().start()  # metering wraps the TTP client's requests only while it runs
        rows = x.matmul(module.w1)  # (1, 3, 4) embedding lookup by one-hot product
        scaled = rows * module.gain
        causal = torch.tril(torch.ones(3, 3))
        mixed = (module.w2[:3, :3].unsqueeze(0) * causal).matmul(scaled)  # weight on the left, sliced and masked
        logits = mixed.matmul(module.w3.transpose(0, 1))  # tied LM head
        products = session.counters["products"] - before
        meter.stop()
        out = {name: t.get_plain_text(dst=CLIENT) for name, t in
               (("rows", rows), ("scaled", scaled), ("mixed", mixed), ("logits", logits))}
    del comm.all_reduce  # the recording wrapper was an instance attribute: back to the class's method
    wrapped = {}
    if crypten.mpc.ttp_required():
        from crypten.mpc.provider.ttp_provider import TTPClient

        wrapped["ttp_request"] = "ttp_request" in vars(TTPClient.get())
    keys = [module.w1._tensor.key, module.w2._tensor.key, module.w3._tensor.key] if fixed_on else []
    assert fixed.session() is session
    return {"out": out if rank == CLIENT else None, "products": products, "keys": keys,
            "setup": setup_openings, "opened": opened[len(setup_openings):], "one_hot": one_hot,
            "counters": dict(session.counters), "wrapped": wrapped,
            "weight_sessions": {getattr(w._tensor, "session", None) is session for w in (module.w1, module.w3)}}


def _reference() -> dict[str, torch.Tensor]:
    table = torch.arange(24, dtype=torch.float32).view(6, 4) / 10
    gain = torch.tensor([1.0, -2.0, 0.5, 3.0])
    rows = torch.nn.functional.one_hot(torch.tensor([[1, 4, 2]]), 6).float() @ table
    scaled = rows * gain
    mixed = (table[:3, :3].unsqueeze(0) * torch.tril(torch.ones(3, 3))) @ scaled
    return {"rows": rows, "scaled": scaled, "mixed": mixed, "logits": mixed @ table.t()}


@functools.lru_cache(maxsize=None)
def _run(provider: str, fixed_on: bool) -> list[dict]:
    return run_parties(functools.partial(_weights_party, fixed_on=fixed_on), provider=provider, timeout=120)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_fixed_products_match_plaintext_and_fresh_triples(provider: str) -> None:
    ref = _reference()
    server, client = _run(provider, True)
    _, fresh_client = _run(provider, False)
    for name, value in ref.items():
        torch.testing.assert_close(client["out"][name], value, atol=2e-3, rtol=0, msg=f"{provider} fixed {name}")
        torch.testing.assert_close(client["out"][name], fresh_client["out"][name], atol=2e-3, rtol=0,
                                   msg=f"{provider} fixed vs fresh {name}")
    # All four products (lookup, gain, left product, transposed product) took the fixed path, on both parties.
    assert server["products"] == client["products"] == 4
    assert _run(provider, False)[0]["products"] == 0


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_session_counts_setups_products_and_openings(provider: str) -> None:
    """Each party's counters live in its session (fresh per launch) and count exactly this launch's work."""
    server, client = _run(provider, True)
    fresh_server, _ = _run(provider, False)
    # Four weights fixed (w1, w2, w3: 6 x 4; gain: 4); four products, each opening its activation only: the
    # (1, 3, 6) one-hot, then three (1, 3, 4) activations (rows for the gain, scaled, mixed).
    for party in (server, client):
        assert party["counters"]["setups"] == 4
        assert party["counters"]["setup_values"] == 3 * 24 + 4
        assert party["counters"]["products"] == 4
        assert party["counters"]["product_values"] == 18 + 3 * 12
        assert party["weight_sessions"] == {True}
        assert party["wrapped"] == ({"ttp_request": False} if provider == "ttp" else {})
    assert server["counters"] == client["counters"]
    assert fresh_server["counters"] == dict.fromkeys(fixed.COUNTER_NAMES, 0)


def test_fixing_a_weight_needs_an_installed_session(crypten) -> None:
    """Outside a party started by init_party there is no session: encrypt_model says so instead of patching."""
    from mpcgen.errors import MpcgenError
    from mpcgen.mpc.encrypt import encrypt_model

    assert not fixed.installed()
    with pytest.raises(MpcgenError, match="no fixed-weight session"):
        encrypt_model(torch.nn.Linear(2, 2), weights="private", fixed=True)
    encrypt_model(torch.nn.Linear(2, 2), weights="private", fixed=False)  # CrypTen's own products need none


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_masks_are_distinct_per_weight(provider: str) -> None:
    server, client = _run(provider, True)
    assert server["keys"] == client["keys"] and len(set(server["keys"])) == 3
    # Setup opened F = W - B once per weight (4 weights). w1, w2, w3 hold the same W, so equal openings would mean
    # a shared mask B; they also look nothing like W itself.
    f1, f2, f3, _ = server["setup"][-4:]
    table = (torch.arange(24).view(6, 4) * SCALE // 10)
    for a, b in ((f1, f2), (f1, f3), (f2, f3)):
        assert (a != b).float().mean() > 0.99
    assert (f1 - table).abs().min() > 0 or (f1 != table).float().mean() > 0.99
    assert all(torch.equal(s, c) for s, c in zip(server["setup"], client["setup"]))  # F is public to both


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_server_sees_only_masked_client_data(provider: str) -> None:
    """After setup, everything the server learns from openings is the client's data plus fresh masks: no opened
    tensor holds the encoded one-hot rows (values 0 and 2^16) the client shared."""
    server, _ = _run(provider, True)
    assert server["one_hot"] is None
    assert len(server["opened"]) >= 4
    for tensor in server["opened"]:
        plain_like = (tensor == 0) | (tensor == SCALE)
        assert plain_like.float().mean() < 0.5, "an opening looks like the client's plaintext one-hot"


def test_generation_traffic_per_token_drops() -> None:
    """A tiny MERGE student with ER decoding: the same tokens with and without fixed weights, the masks' openings
    reported as session setup, and per-token online bytes a small fraction of the fresh-triple path's."""
    from mpcgen.generation import generate_private
    from mpcgen.models import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, eos_token_id=2)
    model = build_model(config.with_preset("merge")).eval()
    prompt = [[1, 5, 9, 13]]
    runs = {flag: generate_private(model, prompt, max_new_tokens=4, provider="ttp", weights="private",
                                   fixed_weights=flag, timeout=120)[0] for flag in (True, False)}
    on, off = runs[True].stats, runs[False].stats
    assert runs[True].all_tokens == runs[False].all_tokens
    assert on.fixed_weights and not off.fixed_weights
    assert on.setup.rounds > 0 and on.setup.online_bytes > 0 and off.setup.online_bytes == 0
    # same rounds per token: one opening per product either way; the bytes drop to the activations' masks
    assert sum(s.rounds for s in on.steps) == sum(s.rounds for s in off.steps) > 0
    assert sum(s.online_bytes for s in on.steps) < 0.2 * sum(s.online_bytes for s in off.steps)
