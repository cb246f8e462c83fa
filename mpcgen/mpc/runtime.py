"""The encrypted forward pass: the server's weights and the client's tokens in, logits out to the client only.

Who learns what (DESIGN section 1): the server announces the model's public config (architecture and geometry) and
secret-shares its weights (``private``), or both parties hold the weights (``public``). The client announces only the
lengths of its inputs, one-hot encodes its token ids in plaintext and secret-shares the one-hot rows, so the
embedding is a one-hot x table product. The logits are revealed to the client alone
(:func:`~mpcgen.mpc.encrypt.reveal` to ``CLIENT``: CrypTen's ``get_plain_text`` with an exact decoder); the server
ends with nothing but its own cost counters.

:func:`forward_party` is what each party runs (the local launcher and ``python -m mpcgen.mpc.party`` both call it);
:func:`private_forward` runs it over local processes and returns the client's view.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mpcgen import ops
from mpcgen.errors import MpcgenError
from mpcgen.mpc.compat import crypten
from mpcgen.models.inference import prepare_for_inference
from mpcgen.models.loading import load_model
from mpcgen.mpc.costs import CostReport, PartyCost
from mpcgen.mpc.encrypt import encrypt_input, encrypt_model, reveal
from mpcgen.mpc.launch import run_parties
from mpcgen.mpc.meter import CostMeter
from mpcgen.mpc.roles import CLIENT, DEFAULT_TIMEOUT_S, SERVER, check_provider, check_weights_mode

logger = logging.getLogger(__name__)

ModelSource = nn.Module | str | os.PathLike | None  # a model, a model folder, or None (the config comes in)


@dataclass
class PartyForward:
    """What one party ends with: logits only on the party they were revealed to; its own costs; and, on the client,
    the report over both parties (the server sends its counters after the run)."""

    rank: int
    logits: torch.Tensor | None
    cost: PartyCost
    report: CostReport | None = None


@dataclass
class ForwardResult:
    """The client's view of one encrypted forward pass (``logits``: plaintext, (B, T, vocab))."""

    logits: torch.Tensor
    cost: CostReport
    provider: str
    weights: str


# ------------------------------------------------------------------------------------------------ model helpers


def _zero_model(config_dict: dict[str, Any]) -> nn.Module:
    """The announced architecture with zero weights (a non-owner's copy: only the shapes are used)."""
    from mpcgen.models import ModelConfig, build_model

    model = build_model(ModelConfig.from_dict(config_dict))
    for param in model.parameters():
        param.data.zero_()
    return model


# ---------------------------------------------------------------------------------------------------- one party


def setup_model(rank: int, model: ModelSource, *, weights: str, prepare: bool = True) -> nn.Module:
    """Every party's plaintext copy of the model, before :func:`encrypt_model`; call in every party, same order.

    ``private``: the server loads (and prepares) its model and announces the config; the other party builds that
    architecture with zero weights, so it learns the config and nothing else. ``public``: every party loads the
    same model, and the parties compare weight digests.
    """
    comm = crypten.communicator.get()
    if weights == "private":
        if rank == SERVER:
            if model is None:
                raise MpcgenError("no model given: the weight owner must pass a model or a model folder")
            model = load_model(model)
            model = prepare_for_inference(model) if prepare else model
        config = comm.broadcast_obj(model.config.to_dict() if rank == SERVER else None, SERVER)
        if rank != SERVER:
            model = _zero_model(config)
        return model
    if model is None:
        raise MpcgenError("public weights: every party must pass the same model or model folder")
    model = load_model(model)
    model = prepare_for_inference(model) if prepare else model
    _check_same_weights(model, rank, comm)
    return model



def forward_party(
    rank: int,
    model: ModelSource = None,
    input_ids: torch.Tensor | None = None,
    decoder_input_ids: torch.Tensor | None = None,
    *,
    weights: str = "private",
    reveal_to: int = CLIENT,
    prepare: bool = True,
    fixed_weights: bool = True,
) -> PartyForward:
    """One party's side of an encrypted forward pass; call inside an initialised party (see :mod:`.launch`).

    Args:
        rank: this party's rank (``SERVER`` or ``CLIENT``).
        model: the server's model or folder. ``private``: ignored on the client (it builds the announced
            architecture with zero weights). ``public``: every party passes the same model.
        input_ids: the client's token ids (B, T) (decoder input; the encoder input for encoder-decoders). ``None``
            on the server: it must never hold them.
        decoder_input_ids: the client's decoder ids (B, T') for encoder-decoders.
        weights: ``"private"`` or ``"public"``.
        reveal_to: the rank that learns the logits.
        prepare: merge / freeze the model to its inference form first (:func:`prepare_for_inference`).
        fixed_weights: ``private`` only: the fixed-operand setup per weight (:mod:`mpcgen.mpc.fixed`), metered as
            the ``setup`` group. One forward pass uses each weight once, so it pays the masks' openings without
            reusing them; generation sessions are where it pays off. Both parties must pass the same value.

    Returns:
        :class:`PartyForward`; ``logits`` is ``None`` on every rank but ``reveal_to``.
    """
    check_weights_mode(weights)
    comm = crypten.communicator.get()
    if comm.get_world_size() != 2:
        raise MpcgenError("the encrypted forward pass is a two-party protocol (server and client)")
    if rank != CLIENT and (input_ids is not None or decoder_input_ids is not None):
        raise MpcgenError(f"rank {rank} was given token ids, but only the client (rank {CLIENT}) holds them")
    if reveal_to not in (SERVER, CLIENT):
        raise MpcgenError(f"reveal_to={reveal_to} is not a computing party (server {SERVER}, client {CLIENT})")

    # Public facts first: the architecture (from the weight owner) and the input lengths (from the client).
    model = setup_model(rank, model, weights=weights, prepare=prepare)
    config = model.config
    if rank == CLIENT:
        _check_ids(input_ids, "input_ids", config.vocab_size)
        if config.arch == "encoder-decoder":
            _check_ids(decoder_input_ids, "decoder_input_ids", config.vocab_size)
        elif decoder_input_ids is not None:
            raise MpcgenError("decoder_input_ids is only for encoder-decoder models")
    shapes = comm.broadcast_obj(
        {"input": tuple(input_ids.shape), "decoder": None if decoder_input_ids is None else
         tuple(decoder_input_ids.shape)} if rank == CLIENT else None, CLIENT)

    meter = CostMeter()
    with torch.no_grad(), crypten.no_grad():
        meter.attach(model)
        with meter:
            with meter.section("setup"):
                model = encrypt_model(model, weights=weights, src=SERVER, fixed=fixed_weights)
            with meter.section("embed"):  # the client shares its one-hot rows
                one_hot = share_one_hot(input_ids, shapes["input"], config.vocab_size, rank)
                dec_one_hot = (None if shapes["decoder"] is None else
                               share_one_hot(decoder_input_ids, shapes["decoder"], config.vocab_size, rank))
            if config.arch == "encoder-decoder":
                out = model(one_hot=one_hot, decoder_one_hot=dec_one_hot, use_cache=False)
            else:
                out = model(one_hot=one_hot, use_cache=False)
            with meter.section("reveal"):
                logits = reveal(out.logits, dst=reveal_to)  # None on every other rank
        meter.detach()
    cost = meter.result()
    return PartyForward(rank=rank, logits=logits if rank == reveal_to else None, cost=cost,
                        report=_exchange_costs(cost, rank, comm))


def _weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _check_same_weights(model: nn.Module, rank: int, comm: Any) -> None:
    """Public weights: both parties must hold the same model, else the result is silently wrong; compare digests."""
    mine = _weights_digest(model)
    digests = [comm.broadcast_obj(mine if rank == r else None, r) for r in (SERVER, CLIENT)]
    if digests[0] != digests[1]:
        raise MpcgenError("with public weights both parties must load the same model, but their weights differ "
                          f"(sha256 {digests[0][:12]} on the server, {digests[1][:12]} on the client)")


def _check_ids(ids: torch.Tensor | None, name: str, vocab: int) -> None:
    if ids is None:
        raise MpcgenError(f"the client must pass {name}")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.numel() == 0:
        raise MpcgenError(f"{name} must be a non-empty integer tensor (batch, length)")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise MpcgenError(f"{name} has ids outside the vocabulary [0, {vocab})")


def share_one_hot(ids: torch.Tensor | None, shape: tuple[int, ...], vocab: int, rank: int) -> Any:
    """Secret-share the client's one-hot rows (B, T, vocab); the other party passes nothing but the shape."""
    plain = ops.one_hot(ids, vocab) if rank == CLIENT else None
    return encrypt_input(plain, (*shape, vocab), src=CLIENT)


def _exchange_costs(cost: PartyCost, rank: int, comm: Any) -> CostReport | None:
    """Send the server's counters to the client (plain numbers, after the run), which builds the joint report."""
    provider = crypten.cfg.mpc.provider.lower()
    if rank == SERVER:
        comm.send_obj(cost.to_dict(), CLIENT)
        return None
    return CostReport.from_parties([PartyCost.from_dict(comm.recv_obj(SERVER)), cost], provider=provider)


# -------------------------------------------------------------------------------------------- local convenience


def private_forward(
    model_or_dir: nn.Module | str | os.PathLike,
    input_ids: torch.Tensor,
    *,
    decoder_input_ids: torch.Tensor | None = None,
    weights: str = "private",
    provider: str = "ttp",
    reveal_to: int = CLIENT,
    prepare: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    fixed_weights: bool = True,
) -> ForwardResult:
    """Run one encrypted forward pass over local processes (server, client, and the dealer for ``ttp``).

    Args:
        model_or_dir: the server's student (module or saved folder).
        input_ids: the client's ids (B, T); for encoder-decoders the encoder input.
        decoder_input_ids: the client's decoder ids (B, T'), encoder-decoders only.
        weights: ``"private"`` (the server secret-shares its weights; the client process gets only the config the
            server announces) or ``"public"`` (both processes get the model).
        provider: ``"ttp"`` (dealer process; the default) or ``"tfp"`` (insecure; benchmark parity).
        reveal_to: the rank that learns the logits (the client; anything else breaks the threat model).
        prepare: merge / freeze to the inference form first.
        timeout: seconds for the whole run.
        fixed_weights: ``private`` only: fixed-operand weights (see :func:`forward_party`).

    Returns:
        :class:`ForwardResult` with the logits the client learned and the cost report over both parties.

    Note:
        Only the client process receives ``input_ids``; the server process receives the model and learns the input
        shapes. The logits are revealed to the client process alone.
    """
    check_weights_mode(weights)
    check_provider(provider)
    if reveal_to != CLIENT:
        logger.warning("revealing logits to rank %d, not the client: outside the threat model", reveal_to)
    fn = functools.partial(forward_party, weights=weights, reveal_to=reveal_to, prepare=prepare,
                           fixed_weights=fixed_weights)
    client_model = model_or_dir if weights == "public" else None
    results = run_parties(fn, provider=provider, timeout=timeout,
                          party_args={SERVER: (model_or_dir,), CLIENT: (client_model, input_ids, decoder_input_ids)})
    client = results[CLIENT]
    holder = results[reveal_to]
    return ForwardResult(logits=holder.logits, cost=client.report, provider=provider, weights=weights)
