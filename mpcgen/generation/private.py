"""Private generation: the two-party session (one per run, every prompt inside it), its local launcher, and the
plaintext reference that runs the same loop without MPC.

Who learns what (DESIGN section 1), and where the code enforces it:

* The server holds the weights. With ``private`` weights it announces the model's config (architecture, geometry,
  special token ids, preset) and secret-shares every parameter; with ``public`` weights both parties hold them.
* The client holds the prompts. It announces the number of prompts, their lengths, ``max_new_tokens`` and the
  decoding (the server learns lengths, as the threat model allows), then secret-shares one-hot rows of each prompt.
  :func:`generation_party` refuses prompts on any rank but the client; the local launcher sends them to the
  client's process only.
* Every reveal is :func:`mpcgen.mpc.encrypt.reveal` to ``CLIENT`` (:class:`MpcHooks`; CrypTen's ``get_plain_text``
  with an exact decoder): under ``tokens`` decoding the token ids, under ``er`` the logits of the generated
  positions (the LM head runs once on the stacked states and the client takes the argmax), under ``client`` each
  step's logits of the newest position (the client picks the token, in plaintext, with greedy or seeded sampling
  settings the server never sees, and secret-shares its one-hot). The server's results hold its own cost counters
  and nothing else.
* The loop always runs ``max_new_tokens`` steps (:mod:`mpcgen.generation.loop`), so the output length stays with
  the client.

Decodings compared: ``client`` keeps the model's own token choice (its quality is the plaintext model's) at a few
rounds per token (LM head, one reveal, one one-hot product), but the client learns a distribution over the
vocabulary at every step, not only tokens; ``tokens`` reveals only the tokens, for the price of a secure argmax over
the vocabulary per step (about 100 rounds at vocabulary 4,096); ``er`` reveals the generated positions' logits at
the end and runs no per-step LM head at all, but needs a model trained for it.

Fixed weights: with ``private`` weights the server's weights are set up once per session with the fixed-operand
protocol (:mod:`mpcgen.mpc.fixed`, on unless ``fixed_weights=False``): each weight's mask is opened once, metered as
the session's **setup** (``GenerationStats.setup``), and every later product opens only the activation's mask.

Batching: ONE session secret-shares the weights once and runs every prompt. Prompts of equal length run together
as one batch (up to ``batch_size``): a batch pays the rounds of one prompt. Prompts of different lengths run one
batch after another (:func:`~mpcgen.generation.loop.plan_batches`). The server learns each batch's size and prompt
length, i.e. the lengths it may learn anyway.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any, Sequence

import torch
from torch import nn

from mpcgen.data import delex
from mpcgen.errors import MpcgenError
from mpcgen.generation.inputs import Prompt, encode_prompts, resolve_tokenizer
from mpcgen.generation.loop import Hooks, check_decoding, decode, default_decoding, plan_batches, truncate_at_eos
from mpcgen.generation.results import GenerationStats, PartyGeneration, PrivateGeneration
from mpcgen.generation.sampling import TokenChooser
from mpcgen.models.loading import ModelLike, load_model
from mpcgen.mpc.costs import CostReport, PartyCost
from mpcgen.mpc.roles import CLIENT, DEFAULT_TIMEOUT_S, SERVER, check_provider, check_weights_mode

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ hooks


class TimedHooks(Hooks):
    """Plaintext backend that records the wall time at each mark; it runs every step, as under MPC."""

    may_stop_early = False

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: list[float] = []

    def mark(self, label: str) -> None:
        self.times.append(time.perf_counter() - self.start)

    def phases(self) -> list[CostReport]:
        """Wall time of each interval between marks (prompt, each token, finish)."""
        return [CostReport.plaintext(b - a) for a, b in zip(self.times, self.times[1:])]


class MpcHooks(Hooks):
    """CrypTen backend: meter sections, reveals to the client only, a cumulative cost snapshot at every mark."""

    may_stop_early = False  # the server would learn the output length

    def __init__(self, meter: Any, rank: int, progress: Any = None, batch: int = 1) -> None:
        self.meter, self.rank, self.progress, self.batch = meter, rank, progress, batch
        self.snapshots: list[PartyCost] = []

    def section(self, name: str):
        return self.meter.section(name)

    def share_public(self, x: torch.Tensor) -> Any:
        from mpcgen.mpc.compat import crypten

        return crypten.cryptensor(x, src=SERVER)  # a public constant: shared without communication

    def share_client(self, x: torch.Tensor | None, shape: Sequence[int]) -> Any:
        from mpcgen.mpc.encrypt import encrypt_input

        return encrypt_input(x if self.rank == CLIENT else None, shape, src=CLIENT)

    def reveal(self, x: Any) -> torch.Tensor | None:
        from mpcgen.mpc.encrypt import reveal

        plain = reveal(x, dst=CLIENT)  # the server receives nothing (it only sends its share)
        return plain if self.rank == CLIENT else None

    def mark(self, label: str) -> None:
        self.snapshots.append(self.meter.snapshot())
        if label == "token" and self.progress is not None:
            self.progress.update(self.batch)


def phase_reports(per_party: Sequence[Sequence[PartyCost]], provider: str | None) -> list[CostReport]:
    """The parties' cumulative snapshots at the same marks -> one combined report per interval between them."""
    lengths = {len(s) for s in per_party}
    if len(lengths) != 1:
        raise MpcgenError(f"the parties marked different numbers of phases: {sorted(lengths)}")
    return [CostReport.from_parties([snaps[i + 1].since(snaps[i]) for snaps in per_party], provider=provider)
            for i in range(len(per_party[0]) - 1)]


# ------------------------------------------------------------------------------------------------- one party


def generation_party(
    rank: int,
    model: ModelLike | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    chooser: TokenChooser | None = None,
    *,
    max_new_tokens: int = 32,
    decoding: str | None = None,
    weights: str = "private",
    fixed_weights: bool = True,
    prepare: bool = True,
    batch_size: int = 8,
    progress: bool = False,
) -> PartyGeneration:
    """One party's side of a private generation session; call inside an initialised party (:mod:`mpcgen.mpc`).

    Args:
        rank: ``SERVER`` (0) or ``CLIENT`` (1).
        model: the server's model (module or folder). ``private``: ignored on the client, which builds the
            announced architecture with zero weights. ``public``: every party passes the same model.
        prompts: the client's prompt ids (one list per prompt); must be None on the server.
        max_new_tokens: tokens per prompt. The client's value is announced and used by both parties.
        decoding: ``"tokens"``, ``"er"``, ``"client"`` or None (:func:`~mpcgen.generation.loop.default_decoding`);
            the client's choice is announced.
        weights: ``"private"`` or ``"public"`` (both parties must agree).
        fixed_weights: with ``private`` weights, open each weight's mask once for the session
            (:mod:`mpcgen.mpc.fixed`); the server's choice is announced and used by both parties.
        prepare: merge / freeze the model to its inference form first.
        batch_size: the client's most prompts per batch (prompts of equal length run together).
        chooser: ``client`` decoding: the client's token choice (default greedy); never leaves the client.
        progress: show a tqdm bar over generated tokens (client only).

    Returns:
        :class:`PartyGeneration`: on the client the token ids of every step and stats per prompt; on the server its
        own counters only.

    Raises:
        MpcgenError: prompts or a chooser given to the server, bad prompts (on the client; the server then stops with
            the client's message), a model that cannot run the decoding.
    """
    from mpcgen.mpc.compat import crypten

    check_weights_mode(weights)
    comm = crypten.communicator.get()
    if comm.get_world_size() != 2:
        raise MpcgenError("private generation is a two-party protocol (server and client)")
    if rank != CLIENT and (prompts is not None or chooser is not None):
        raise MpcgenError(f"rank {rank} was given prompts or a token chooser, but only the client (rank {CLIENT}) "
                          "holds them")
    return _session(rank, model, prompts, max_new_tokens=max_new_tokens, decoding=decoding, weights=weights,
                    fixed_weights=fixed_weights, prepare=prepare, batch_size=batch_size, chooser=chooser,
                    progress=progress)


# What a client's plan holds, and bounds the server puts on it: a plan is the server's whole workload, so one that is
# malformed or unbounded must end the session with a reason, not a traceback or a run without end.
PLAN_KEYS = ("decoding", "max_new_tokens", "shapes")
MAX_BATCHES = 4096
MAX_BATCH_SIZE = 1024


def check_plan(plan: Any, config: Any) -> dict[str, Any]:
    """A client's announced plan, checked against the server's model: ``{"shapes": [(size, length), ...],
    "max_new_tokens": int, "decoding": str}`` with 1 <= len(shapes) <= :data:`MAX_BATCHES`, 1 <= size <=
    :data:`MAX_BATCH_SIZE`, length >= 1, every prompt + ``max_new_tokens`` within the model's positions and a
    decoding the model can run. Returns it normalised (lists of int pairs); raises :class:`MpcgenError` naming the
    field and its value."""
    from mpcgen.generation.loop import DECODINGS, check_fits

    if not isinstance(plan, dict):
        raise MpcgenError(f"the plan must be a dict, got {type(plan).__name__}")
    unknown, missing = sorted(set(plan) - set(PLAN_KEYS), key=repr), sorted(set(PLAN_KEYS) - set(plan))
    if unknown or missing:
        raise MpcgenError(f"the plan must hold exactly the keys {list(PLAN_KEYS)}: unknown {unknown}, missing "
                          f"{missing}")
    steps = _plan_int("max_new_tokens", plan["max_new_tokens"], 1, config.n_positions)
    decoding = plan["decoding"]
    if not isinstance(decoding, str):
        raise MpcgenError(f"decoding={decoding!r} must be a string, one of {list(DECODINGS)}")
    check_decoding(decoding, config)
    shapes = plan["shapes"]
    if not isinstance(shapes, (list, tuple)) or not 1 <= len(shapes) <= MAX_BATCHES:
        what = f"{len(shapes)} batches" if isinstance(shapes, (list, tuple)) else type(shapes).__name__
        raise MpcgenError(f"shapes must be a list of 1 to {MAX_BATCHES} (batch size, prompt length) pairs, got {what}")
    out = []
    for b, shape in enumerate(shapes):
        if not isinstance(shape, (list, tuple)) or len(shape) != 2:
            raise MpcgenError(f"shapes[{b}]={shape!r} must be a (batch size, prompt length) pair")
        size = _plan_int(f"shapes[{b}] batch size", shape[0], 1, MAX_BATCH_SIZE)
        length = _plan_int(f"shapes[{b}] prompt length", shape[1], 1, None)
        try:
            check_fits(config, length, steps)
        except MpcgenError as err:
            raise MpcgenError(f"shapes[{b}]: {err}") from None
        out.append((size, length))
    return {"shapes": out, "max_new_tokens": steps, "decoding": decoding}


def _plan_int(name: str, value: Any, low: int, high: int | None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise MpcgenError(f"{name}={value!r} must be an integer {bound}")
    return value


def _client_plan(config: Any, prompts: Sequence[Sequence[int]] | None, *, max_new_tokens: int,
                 decoding: str | None, batch_size: int) -> tuple[dict[str, Any], list[list[int]], list[list[int]]]:
    """The client's ``(plan, batches, ids)``, checked as the server will check it (so a client fails with its own
    message first)."""
    chosen = decoding or default_decoding(config)
    check_decoding(chosen, config)
    ids = encode_prompts(prompts or [], None, config, max_new_tokens)
    batches = plan_batches([len(p) for p in ids], batch_size)
    plan = {"shapes": [(len(b), len(ids[b[0]])) for b in batches], "max_new_tokens": max_new_tokens,
            "decoding": chosen}
    return check_plan(plan, config), batches, ids


def _announce(rank: int, comm: Any, config: Any, prompts: Sequence[Sequence[int]] | None, *, max_new_tokens: int,
              decoding: str | None, batch_size: int) -> tuple[dict[str, Any], list[list[int]], list[list[int]]]:
    """The client checks its prompts against the announced config and announces batch shapes and settings, or why
    it stops; the server checks the plan (:func:`check_plan`) and answers with an acceptance or its reason to
    refuse. Either way both parties end with the same message rather than with a lost connection."""
    plan: Any = None
    batches: list[list[int]] = []
    ids: list[list[int]] = []
    if rank == CLIENT:
        try:
            plan, batches, ids = _client_plan(config, prompts, max_new_tokens=max_new_tokens, decoding=decoding,
                                              batch_size=batch_size)
        except MpcgenError as err:
            plan = {"error": str(err)}
    plan = comm.broadcast_obj(plan, CLIENT)
    if isinstance(plan, dict) and set(plan) == {"error"} and isinstance(plan["error"], str):
        raise MpcgenError(plan["error"] if rank == CLIENT else f"the client stopped before generating: {plan['error']}")
    reply: Any = None
    if rank == SERVER:
        try:
            plan, reply = check_plan(plan, config), {"accepted": True}
        except MpcgenError as err:
            reply = {"accepted": False, "reason": str(err)}
    reply = comm.broadcast_obj(reply, SERVER)  # one message more: the client learns why, not a lost connection
    if not isinstance(reply, dict) or reply.get("accepted") is not True:
        reason = reply.get("reason") if isinstance(reply, dict) else f"a malformed reply {reply!r}"
        raise MpcgenError(f"the server refused the client's generation plan: {reason}" if rank == CLIENT
                          else f"refused the client's generation plan: {reason}")
    return plan, batches, ids


def _session(rank: int, model: ModelLike | None, prompts: Sequence[Sequence[int]] | None, *, max_new_tokens: int,
             decoding: str | None, weights: str, fixed_weights: bool, prepare: bool, batch_size: int,
             chooser: TokenChooser | None, progress: bool) -> PartyGeneration:
    """The body of :func:`generation_party`."""
    from tqdm.auto import tqdm

    from mpcgen.mpc.compat import crypten
    from mpcgen.mpc.encrypt import encrypt_model
    from mpcgen.mpc.meter import CostMeter
    from mpcgen.mpc.runtime import setup_model, share_one_hot

    comm = crypten.communicator.get()
    model = setup_model(rank, model, weights=weights, prepare=prepare)
    config = model.config
    plan, batches, ids = _announce(rank, comm, config, prompts, max_new_tokens=max_new_tokens, decoding=decoding,
                                   batch_size=batch_size)
    fixed = weights == "private" and comm.broadcast_obj(bool(fixed_weights) if rank == SERVER else None, SERVER)
    shapes, steps, chosen = plan["shapes"], plan["max_new_tokens"], plan["decoding"]
    provider = crypten.cfg.mpc.provider.lower()
    choose = chooser or TokenChooser()

    n_prompts = sum(b for b, _ in shapes)
    tokens: list[list[int]] = [[] for _ in range(n_prompts)]
    stats: list[Any] = [None] * n_prompts
    costs: list[PartyCost] = []
    with torch.no_grad(), crypten.no_grad():
        setup_meter = CostMeter()
        with setup_meter, setup_meter.section("setup"):  # once for every batch
            model = encrypt_model(model, weights=weights, src=SERVER, fixed=fixed)
        setup = setup_meter.result()
        meter = CostMeter().attach(model)
        bar = tqdm(total=n_prompts * steps, desc=f"private generation ({chosen})", unit="tok",
                   disable=not (progress and rank == CLIENT))
        try:
            for b, (size, length) in enumerate(shapes):
                hooks = MpcHooks(meter, rank, bar, batch=size)
                with meter:
                    hooks.mark("start")
                    with meter.section("embed"):  # the client shares its prompts' one-hot rows
                        rows = torch.tensor([ids[i] for i in batches[b]]) if rank == CLIENT else None
                        one_hot = share_one_hot(rows, (size, length), config.vocab_size, rank)
                    out = decode(model, {"one_hot": one_hot}, max_new_tokens=steps, decoding=chosen, hooks=hooks,
                                 choose=choose if rank == CLIENT else None)
                cost = meter.result()
                costs.append(cost)
                # After the metered run: the server sends its counters (plain numbers) for the joint figures.
                mine = {"run": cost.to_dict(), "setup": setup.to_dict(), "snapshots": [s.to_dict() for s in
                                                                                      hooks.snapshots]}
                if rank == SERVER:
                    comm.send_obj(mine, CLIENT)
                    continue
                other = comm.recv_obj(SERVER)
                server_snaps = [PartyCost.from_dict(s) for s in other["snapshots"]]
                batch_stats = GenerationStats(
                    mode="mpc", decoding=chosen, preset=config.preset, provider=provider, weights=weights,
                    prompt_tokens=length, batch_size=size, fixed_weights=fixed,
                    phases=phase_reports([server_snaps, hooks.snapshots], provider),
                    run=CostReport.from_parties([PartyCost.from_dict(other["run"]), cost], provider=provider),
                    setup=CostReport.from_parties([PartyCost.from_dict(other["setup"]), setup], provider=provider))
                for row, i in enumerate(batches[b]):
                    tokens[i], stats[i] = out[row].tolist(), batch_stats
        finally:
            bar.close()
            meter.detach()
    if rank != CLIENT:
        return PartyGeneration(rank=rank, costs=costs)
    return PartyGeneration(rank=rank, costs=costs, tokens=tokens, stats=stats)


# ---------------------------------------------------------------------------------------------- local runs


def _check_common(max_new_tokens: int) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise MpcgenError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")


def _without_tokenizer(model: nn.Module) -> nn.Module:
    """A shallow copy without the attached tokenizer, to ship the model to the server's process (it needs none)."""
    if "tokenizer" not in model.__dict__:
        return model
    bare = copy.copy(model)
    del bare.__dict__["tokenizer"]
    return bare


def results_for(prompts: Sequence[Prompt], ids: list[list[int]], tokens: list[list[int]],
                stats: list[GenerationStats], tokenizer: Any, eos: int | None,
                values: Sequence[Mapping[str, str]] | None = None) -> list[PrivateGeneration]:
    """The client's :class:`PrivateGeneration` per prompt: tokens cut after the first eos, and their text (with
    ``values[i]``, the slot values a delexicalised prompt left out, put back: :mod:`mpcgen.data.delex`)."""
    from mpcgen.data.delex import relexicalise
    from mpcgen.tokenization import decode_output

    out = []
    for i, prompt in enumerate(prompts):
        kept = truncate_at_eos(tokens[i], eos)
        text = decode_output(tokenizer, kept) if tokenizer is not None else ""
        if values is not None:
            text = relexicalise(text, values[i])
        out.append(PrivateGeneration(text=text, tokens=kept, stats=stats[i],
                                     prompt=prompt if isinstance(prompt, str) else None, prompt_ids=ids[i],
                                     all_tokens=tokens[i]))
    return out


def eos_id(tokenizer: Any, config: Any) -> int | None:
    """The eos the client cuts at: the tokenizer's, else the model config's."""
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    return eos if eos is not None else config.eos_token_id


def generate_private(
    model_dir_or_model: ModelLike,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 32,
    decoding: str | None = None,
    provider: str = "ttp",
    weights: str = "private",
    fixed_weights: bool = True,
    chooser: TokenChooser | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    tokenizer: Any = None,
    preset: str = "vanilla",
    rendezvous: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
    tls: Any = None,
) -> list[PrivateGeneration]:
    """Generate text for each prompt with two-party secure computation, parties as local processes (loopback).

    Args:
        model_dir_or_model: an mpcgen model, a saved student folder, or a stage-1 Hugging Face teacher folder
            (imported with ``preset``).
        prompts: source texts (encoded as in training: ``[bos] + S + [sep]``) or ready token id lists.
        max_new_tokens: tokens generated per prompt (all steps always run; the text stops at the first eos).
        decoding: ``"client"`` (client-side token choice), ``"tokens"`` (vanilla: argmax + one-hot lookup under
            MPC) or ``"er"`` (Embedding Resending). Default: ``er`` for a model trained with ER, else ``client`` —
            the fewest rounds per token that keep the model's own quality (see the module docstring for what each
            reveals to the client).
        provider: ``"ttp"`` (a dealer process; the default) or ``"tfp"`` (insecure; benchmark parity).
        weights: ``"private"`` (the server secret-shares its weights) or ``"public"`` (both parties hold them).
        fixed_weights: ``private`` only: open each weight's mask once per session and reuse it for every product
            (:mod:`mpcgen.mpc.fixed`; setup reported apart as ``stats.setup``); ``False``: a fresh Beaver triple
            per product, CrypTen's default.
        chooser: ``client`` decoding: how the client picks each token (default greedy; e.g.
            ``TokenChooser(temperature=0.8, top_p=0.9, seed=1)``). Only the client's process receives it.
        timeout: seconds for the whole run (then every process is stopped and an error raised).
        tokenizer: a tokenizer or its folder (default: the one saved with the model).
        preset: the preset a teacher folder is imported into.
        rendezvous: ``tcp://127.0.0.1:PORT`` to meet on a TCP port (default: a file in a temporary folder).
        batch_size: most prompts per batch; prompts of equal length share a batch (see the module docstring).
        progress: show a progress bar per generated token (stderr).
        tls: TLS 1.3 links between the local parties too: a folder from ``python -m mpcgen.certs init`` (default:
            plaintext loopback links, which never leave this host). Across hosts, each party joins with
            ``python -m mpcgen.cli.party ... --tls-cert/--tls-key/--tls-ca``.

    Returns:
        One :class:`PrivateGeneration` per prompt, in order.

    Raises:
        MpcgenError: bad model folder, prompts or settings; a party that failed, was killed or timed out (all
            processes are stopped first; the message names each party's failure).

    Note:
        Who learns what: this process plays the owner of both the model and the prompts; the server's process
        receives the model only, the client's process the prompt ids (and the model with ``public`` weights). The
        client's process alone learns the tokens; the server learns the config-visible lengths (number of prompts,
        each prompt's length, ``max_new_tokens``). See :mod:`mpcgen.generation.private`.
    """
    from mpcgen.mpc.launch import check_rendezvous, run_parties

    _check_common(max_new_tokens)
    check_provider(provider)
    check_weights_mode(weights)
    model = load_model(model_dir_or_model, preset=preset)
    tok = resolve_tokenizer(model, tokenizer)
    decoding = decoding or default_decoding(model.config)
    check_decoding(decoding, model.config)
    if chooser is not None and decoding != "client":
        raise MpcgenError(f"a token chooser (sampling settings) needs decoding 'client', not {decoding!r}")
    inputs, values = delex.prepare(tok, prompts)  # client side: delexicalised values never enter the MPC
    ids = encode_prompts(inputs, tok, model.config, max_new_tokens)
    plan_batches([len(p) for p in ids], batch_size)  # checks batch_size here rather than in a party
    if rendezvous is not None:
        check_rendezvous(rendezvous, SERVER)  # a port in use is a one-line error here, before any process starts
    bare = _without_tokenizer(model)
    fn = functools.partial(generation_party, max_new_tokens=max_new_tokens, decoding=decoding, weights=weights,
                           fixed_weights=fixed_weights, batch_size=batch_size, progress=progress)
    client_args = (bare if weights == "public" else None, ids, chooser)
    results = run_parties(fn, provider=provider, timeout=timeout, rendezvous=rendezvous,
                          party_args={SERVER: (bare,), CLIENT: client_args}, tls=tls)
    client = results[CLIENT]
    return results_for(prompts, ids, client.tokens, client.stats, tok, eos_id(tok, model.config), values)


def generate_plain(
    model_dir_or_model: ModelLike,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 32,
    decoding: str | None = None,
    chooser: TokenChooser | None = None,
    tokenizer: Any = None,
    preset: str = "vanilla",
    prepare: bool = True,
    batch_size: int = 8,
    progress: bool = False,
) -> list[PrivateGeneration]:
    """The plaintext reference: the same model, prompts and decoding loop as :func:`generate_private`, no MPC (and
    no CrypTen import).

    Arguments as for :func:`generate_private`; ``prepare`` runs the model in the inference form the server would
    (merged / frozen; exact). Every step runs, as under MPC. Stats hold wall times only (``mode="plaintext"``).
    """
    from tqdm.auto import tqdm

    from mpcgen.models.inference import prepare_for_inference

    _check_common(max_new_tokens)
    model = load_model(model_dir_or_model, preset=preset)
    tok = resolve_tokenizer(model, tokenizer)
    decoding = decoding or default_decoding(model.config)
    check_decoding(decoding, model.config)
    inputs, values = delex.prepare(tok, prompts)
    ids = encode_prompts(inputs, tok, model.config, max_new_tokens)
    runnable = prepare_for_inference(model) if prepare else model
    tokens: list[list[int]] = [[] for _ in ids]
    stats: list[Any] = [None] * len(ids)
    with torch.no_grad(), tqdm(total=len(ids) * max_new_tokens, desc=f"plaintext generation ({decoding})",
                               unit="tok", disable=not progress) as bar:
        for batch in plan_batches([len(p) for p in ids], batch_size):
            hooks = TimedHooks()
            hooks.mark("start")
            out = decode(runnable, {"input_ids": torch.tensor([ids[i] for i in batch])},
                         max_new_tokens=max_new_tokens, decoding=decoding, hooks=hooks, choose=chooser)
            bar.update(len(batch) * max_new_tokens)
            batch_stats = GenerationStats(mode="plaintext", decoding=decoding, preset=model.config.preset,
                                          provider=None, weights=None, prompt_tokens=len(ids[batch[0]]),
                                          batch_size=len(batch), phases=hooks.phases())
            for row, i in enumerate(batch):
                tokens[i], stats[i] = out[row].tolist(), batch_stats
    return results_for(prompts, ids, tokens, stats, tok, eos_id(tok, model.config), values)


__all__ = ["GenerationStats", "MpcHooks", "PartyGeneration", "PrivateGeneration", "TimedHooks", "generate_plain",
           "generate_private", "generation_party", "phase_reports", "results_for"]
