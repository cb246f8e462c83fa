"""Private generation: the two-party session (one per run, every prompt inside it) and its local launcher.

Who learns what (DESIGN section 1), and where the code enforces it:

* The server holds the weights. With ``private`` weights it announces the model's config (architecture, geometry,
  special token ids, preset) and secret-shares every parameter; with ``public`` weights both parties hold them.
* The client holds the prompts. It announces the number of prompts, their lengths, ``max_new_tokens`` and the
  decoding (the server learns lengths, as the threat model allows), then secret-shares one-hot rows of each prompt.
  :func:`generation_party` refuses prompts on any rank but the client; the local launcher sends them to the
  client's process only.
* Every reveal is ``get_plain_text(dst=CLIENT)`` (:class:`MpcHooks`): under ``tokens`` decoding the token ids,
  under ``er`` the logits of the generated positions (the LM head runs once on the stacked states and the client
  takes the argmax). The server's results hold its own cost counters and nothing else.
* The loop always runs ``max_new_tokens`` steps (:mod:`mpcgen.generation.loop`), so the output length stays with
  the client.

Fixed weights: with ``private`` weights the server's weights are set up once per session with the fixed-operand
protocol (:mod:`mpcgen.mpc.fixed`, on unless ``fixed_weights=False``): each weight's mask is opened once, metered as
the session's **setup** (``GenerationStats.setup_*``), and every later product opens only the activation's mask.

Batching: ONE session secret-shares the weights once and runs every prompt. Prompts of equal length run together
as one batch (up to ``batch_size``): a batch pays the rounds of one prompt. Prompts of different lengths are not
padded into one batch, because a batch's rows share their positions (padding would change the output); they run one
batch after another. The server learns each batch's size and prompt length, i.e. the lengths it may learn anyway.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.generation.inputs import ModelLike, Prompt, encode_prompts, load_model, resolve_tokenizer
from mpcgen.generation.loop import Hooks, check_decoding, default_decoding, greedy_decode, truncate_at_eos

logger = logging.getLogger(__name__)

MARK_FIELDS = ("seconds", "rounds", "bytes", "dealer_rounds", "dealer_bytes")


# ------------------------------------------------------------------------------------------------ result types


@dataclass
class GenerationStats:
    """Costs of generating for one prompt (over both parties under MPC; ``bytes``: online bytes on the link).

    Phases: ``prompt`` (sharing the prompt, its forward pass / encoding), one entry per generated token
    (``per_token_*``: under ``tokens`` decoding LM head + argmax + the next input's forward, under ``er`` the
    resent input's forward), and ``finish`` (``tokens``: the ids' reveal; ``er``: the LM head on the stacked states
    and the logits' reveal). ``per_token()`` spreads everything after the prompt over the generated tokens.
    Seconds are the slowest party's wall time; rounds the maximum over parties; dealer figures are the party-dealer
    traffic (zero for ``tfp`` and in plaintext). All figures are those of the batch the prompt ran in
    (``batch_size`` prompts of the same length share every round and byte).
    """

    mode: str  # "mpc" or "plaintext"
    decoding: str
    preset: str
    provider: str | None
    weights: str | None
    prompt_tokens: int
    new_tokens: int
    batch_size: int
    wall_s: float
    prompt_s: float
    finish_s: float
    per_token_s: list[float]
    rounds: int = 0
    bytes: float = 0.0
    dealer_rounds: int = 0
    dealer_bytes: float = 0.0
    prompt_rounds: int = 0
    prompt_bytes: float = 0.0
    finish_rounds: int = 0
    finish_bytes: float = 0.0
    finish_dealer_bytes: float = 0.0
    per_token_rounds: list[int] = field(default_factory=list)
    per_token_bytes: list[float] = field(default_factory=list)
    per_token_dealer_bytes: list[float] = field(default_factory=list)
    # Once per session (weight sharing and, with fixed weights, the masks' openings), shared by every prompt of
    # the run and not part of the figures above.
    fixed_weights: bool = False
    setup_s: float = 0.0
    setup_rounds: int = 0
    setup_bytes: float = 0.0
    setup_dealer_bytes: float = 0.0
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # per op group (CostReport.groups)
    projected_s: dict[str, float] = field(default_factory=dict)  # LAN / WAN projections of wall_s

    def per_token(self) -> dict[str, float]:
        """Seconds, rounds, online and dealer bytes per generated token (everything after the prompt phase)."""
        n = max(1, self.new_tokens)
        return {
            "seconds": (sum(self.per_token_s) + self.finish_s) / n,
            "rounds": (sum(self.per_token_rounds) + self.finish_rounds) / n,
            "bytes": (sum(self.per_token_bytes) + self.finish_bytes) / n,
            "dealer_bytes": (sum(self.per_token_dealer_bytes) + self.finish_dealer_bytes) / n,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, with ``per_token`` averages."""
        out = dataclasses.asdict(self)
        out["per_token"] = self.per_token()
        return out


@dataclass
class PrivateGeneration:
    """What the client gets for one prompt.

    ``tokens`` are the generated ids up to and including the first eos; ``all_tokens`` every step's id (the loop
    always runs ``max_new_tokens`` steps); ``text`` the decoded ``tokens`` (empty without a tokenizer); ``cost`` the
    full per-party cost report (MPC runs only).
    """

    text: str
    tokens: list[int]
    stats: GenerationStats
    prompt: str | None = None
    prompt_ids: list[int] = field(default_factory=list)
    all_tokens: list[int] = field(default_factory=list)
    cost: Any = None  # mpcgen.mpc.CostReport | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the cost report as its own ``to_dict``)."""
        return {"prompt": self.prompt, "text": self.text, "tokens": self.tokens, "all_tokens": self.all_tokens,
                "prompt_ids": self.prompt_ids, "stats": self.stats.to_dict(),
                "cost": None if self.cost is None else self.cost.to_dict()}


@dataclass
class PartyGeneration:
    """What one party ends with. The server: its own counters only. The client: tokens, stats and reports."""

    rank: int
    costs: list[Any]  # this party's PartyCost per prompt
    tokens: list[list[int]] | None = None
    stats: list[GenerationStats] | None = None
    reports: list[Any] | None = None  # CostReport per prompt


# ------------------------------------------------------------------------------------------------------ hooks


class TimedHooks(Hooks):
    """Plaintext backend that records the wall time at each mark."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[str, list[float]]] = [("start", [0.0, 0, 0.0, 0, 0.0])]

    def mark(self, label: str) -> None:
        self.marks.append((label, [time.perf_counter() - self.start, 0, 0.0, 0, 0.0]))


class MpcHooks(Hooks):
    """CrypTen backend: meter sections, reveals to the client only, a cost snapshot at every mark."""

    def __init__(self, meter: Any, rank: int, progress: Any = None, batch: int = 1) -> None:
        self.meter, self.rank, self.progress, self.batch = meter, rank, progress, batch
        self.marks: list[tuple[str, list[float]]] = []

    def section(self, name: str):
        return self.meter.section(name)

    def share_public(self, x: torch.Tensor) -> Any:
        from mpcgen.mpc.compat import crypten
        from mpcgen.mpc.launch import SERVER

        return crypten.cryptensor(x, src=SERVER)  # a public constant: shared without communication

    def reveal(self, x: Any) -> torch.Tensor | None:
        from mpcgen.mpc.launch import CLIENT

        plain = x.get_plain_text(dst=CLIENT)  # the server receives nothing (it only sends its share)
        return plain if self.rank == CLIENT else None

    def mark(self, label: str) -> None:
        t = self.meter.totals()
        self.marks.append((label, [t.seconds, t.rounds, t.bytes, t.dealer_rounds, t.dealer_bytes]))
        if label == "token" and self.progress is not None:
            self.progress.update(self.batch)


def _intervals(marks: Sequence[tuple[str, list[float]]]) -> list[list[float]]:
    """Cumulative snapshots -> per-phase costs: prompt, each token, finish."""
    return [[b - a for a, b in zip(prev[1], cur[1])] for prev, cur in zip(marks, marks[1:])]


def _combine_intervals(per_party: Sequence[list[list[float]]]) -> list[list[float]]:
    """Per phase over parties: seconds and rounds max, online bytes summed and halved, dealer traffic summed
    (the rules of :class:`mpcgen.mpc.CostReport`)."""
    out = []
    for phase in zip(*per_party):
        out.append([max(p[0] for p in phase), max(p[1] for p in phase), sum(p[2] for p in phase) / len(phase),
                    sum(p[3] for p in phase), sum(p[4] for p in phase)])
    return out


def _make_stats(phases: list[list[float]], *, mode: str, decoding: str, preset: str, provider: str | None,
                weights: str | None, prompt_tokens: int, batch_size: int, report: Any = None) -> GenerationStats:
    prompt, tokens, finish = phases[0], phases[1:-1], phases[-1]
    totals = [sum(p[i] for p in phases) for i in range(len(MARK_FIELDS))]
    stats = GenerationStats(
        mode=mode, decoding=decoding, preset=preset, provider=provider, weights=weights,
        prompt_tokens=prompt_tokens, new_tokens=len(tokens), batch_size=batch_size, wall_s=totals[0],
        prompt_s=prompt[0], finish_s=finish[0], per_token_s=[p[0] for p in tokens], rounds=int(totals[1]), bytes=totals[2],
        dealer_rounds=int(totals[3]), dealer_bytes=totals[4], prompt_rounds=int(prompt[1]), prompt_bytes=prompt[2],
        finish_rounds=int(finish[1]), finish_bytes=finish[2], per_token_rounds=[int(p[1]) for p in tokens],
        per_token_bytes=[p[2] for p in tokens], per_token_dealer_bytes=[p[4] for p in tokens],
        finish_dealer_bytes=finish[4])
    if report is not None:
        stats.groups = report.groups
        # The report's totals are the same counters; its wall time is the slowest party's whole metered run.
        stats.rounds, stats.bytes = report.rounds, report.online_bytes
        stats.dealer_rounds, stats.dealer_bytes = report.dealer_rounds, report.dealer_bytes
        stats.projected_s = {name: report.projected(name) for name in ("lan", "wan")}
    return stats


# ------------------------------------------------------------------------------------------------- one party


def generation_party(
    rank: int,
    model: ModelLike | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
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
        decoding: ``"tokens"``, ``"er"`` or None (``er`` for a model trained with ER, else ``tokens``); the
            client's choice is announced.
        weights: ``"private"`` or ``"public"`` (both parties must agree).
        fixed_weights: with ``private`` weights, open each weight's mask once for the session
            (:mod:`mpcgen.mpc.fixed`); the server's choice is announced and used by both parties.
        prepare: merge / freeze the model to its inference form first.
        batch_size: the client's most prompts per batch (prompts of equal length run together).
        progress: show a tqdm bar over generated tokens (client only).

    Returns:
        :class:`PartyGeneration`: on the client the token ids of every step, stats and cost reports per prompt;
        on the server its own counters only.

    Raises:
        MpcgenError: prompts given to the server, bad prompts (on the client; the server then stops with the
            client's message), a model that cannot run the decoding.
    """
    from mpcgen.mpc.compat import crypten
    from mpcgen.mpc.encrypt import check_weights_mode
    from mpcgen.mpc.launch import CLIENT

    check_weights_mode(weights)
    comm = crypten.communicator.get()
    if comm.get_world_size() != 2:
        raise MpcgenError("private generation is a two-party protocol (server and client)")
    if rank != CLIENT and prompts is not None:
        raise MpcgenError(f"rank {rank} was given prompts, but only the client (rank {CLIENT}) holds them")

    return _session(rank, model, prompts, max_new_tokens=max_new_tokens, decoding=decoding, weights=weights,
                    fixed_weights=fixed_weights, prepare=prepare, batch_size=batch_size, progress=progress)


def _session(rank: int, model: ModelLike | None, prompts: Sequence[Sequence[int]] | None, *, max_new_tokens: int,
             decoding: str | None, weights: str, fixed_weights: bool, prepare: bool, batch_size: int,
             progress: bool) -> PartyGeneration:
    """The body of :func:`generation_party`."""
    from tqdm.auto import tqdm

    from mpcgen.mpc.compat import crypten
    from mpcgen.mpc.encrypt import encrypt_model
    from mpcgen.mpc.launch import CLIENT, SERVER
    from mpcgen.mpc.meter import CostMeter, CostReport
    from mpcgen.mpc.runtime import setup_model, share_one_hot

    comm = crypten.communicator.get()
    model = setup_model(rank, model, weights=weights, prepare=prepare)
    config = model.config
    # The client checks its prompts against the announced config and announces batch shapes and settings, or why
    # it stops (so that the server ends with the client's message rather than with a lost connection).
    plan: dict[str, Any] | None = None
    batches: list[list[int]] = []
    if rank == CLIENT:
        try:
            chosen = decoding or default_decoding(config)
            check_decoding(chosen, config)
            prompts = encode_prompts(prompts or [], None, config, max_new_tokens)
            batches = plan_batches([len(p) for p in prompts], batch_size)
            plan = {"shapes": [(len(b), len(prompts[b[0]])) for b in batches], "max_new_tokens": max_new_tokens,
                    "decoding": chosen}
        except MpcgenError as err:
            plan = {"error": str(err)}
    plan = comm.broadcast_obj(plan, CLIENT)
    fixed = weights == "private" and comm.broadcast_obj(bool(fixed_weights) if rank == SERVER else None, SERVER)
    if "error" in plan:
        raise MpcgenError(plan["error"] if rank == CLIENT else f"the client stopped before generating: {plan['error']}")
    check_decoding(plan["decoding"], config)  # the server checks the client's choice against its model too
    shapes, steps, chosen = plan["shapes"], plan["max_new_tokens"], plan["decoding"]
    provider = crypten.cfg.mpc.provider.lower()

    n_prompts = sum(b for b, _ in shapes)
    tokens: list[list[int]] = [[] for _ in range(n_prompts)]
    stats: list[Any] = [None] * n_prompts
    reports: list[Any] = [None] * n_prompts
    costs: list[Any] = []
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
                        ids = torch.tensor([prompts[i] for i in batches[b]]) if rank == CLIENT else None
                        one_hot = share_one_hot(ids, (size, length), config.vocab_size, rank)
                    out = greedy_decode(model, {"one_hot": one_hot}, max_new_tokens=steps, decoding=chosen,
                                        hooks=hooks)
                cost = meter.result()
                costs.append(cost)
                # After the metered run: the server sends its counters (plain numbers) for the joint report.
                if rank == SERVER:
                    comm.send_obj({"cost": dataclasses.asdict(cost), "marks": hooks.marks,
                                   "setup": dataclasses.asdict(setup)}, CLIENT)
                    continue
                other = comm.recv_obj(SERVER)
                report = CostReport.from_parties([_party_cost(other["cost"]), cost], provider=provider)
                setup_report = CostReport.from_parties([_party_cost(other["setup"]), setup], provider=provider)
                phases = _combine_intervals([_intervals(other["marks"]), _intervals(hooks.marks)])
                batch_stats = _make_stats(phases, mode="mpc", decoding=chosen, preset=config.preset,
                                          provider=provider, weights=weights, prompt_tokens=length, batch_size=size,
                                          report=report)
                batch_stats.fixed_weights = fixed
                batch_stats.setup_s, batch_stats.setup_rounds = setup_report.wall_s, setup_report.rounds
                batch_stats.setup_bytes, batch_stats.setup_dealer_bytes = (setup_report.online_bytes,
                                                                           setup_report.dealer_bytes)
                for row, i in enumerate(batches[b]):
                    tokens[i], stats[i], reports[i] = out[row].tolist(), batch_stats, report
        finally:
            bar.close()
            meter.detach()
    if rank != CLIENT:
        return PartyGeneration(rank=rank, costs=costs)
    return PartyGeneration(rank=rank, costs=costs, tokens=tokens, stats=stats, reports=reports)


def _party_cost(data: dict[str, Any]) -> Any:
    """A :class:`~mpcgen.mpc.meter.PartyCost` from its ``dataclasses.asdict`` form (sent by the server)."""
    from mpcgen.mpc.meter import GroupCost, PartyCost

    return PartyCost(rank=data["rank"], wall_s=data["wall_s"],
                     groups={k: GroupCost(**v) for k, v in data["groups"].items()})


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped into batches of equal length (at most ``batch_size`` each), in order of first
    appearance. Equal lengths only: positions are shared by a batch's rows, so padding would change the output."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise MpcgenError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    by_length: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        by_length.setdefault(length, []).append(i)
    return [group[k:k + batch_size] for group in by_length.values() for k in range(0, len(group), batch_size)]


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


def results_for(prompts: Sequence[Prompt], ids: list[list[int]], tokens: list[list[int]], stats: list[GenerationStats],
             reports: list[Any] | None, tokenizer: Any, eos: int | None) -> list[PrivateGeneration]:
    from mpcgen.tokenization import decode_output

    out = []
    for i, prompt in enumerate(prompts):
        kept = truncate_at_eos(tokens[i], eos)
        text = decode_output(tokenizer, kept) if tokenizer is not None else ""
        out.append(PrivateGeneration(text=text, tokens=kept, stats=stats[i],
                                     prompt=prompt if isinstance(prompt, str) else None, prompt_ids=ids[i],
                                     all_tokens=tokens[i], cost=None if reports is None else reports[i]))
    return out


def _eos_id(tokenizer: Any, config: Any) -> int | None:
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
    timeout: float = 600.0,
    tokenizer: Any = None,
    preset: str = "vanilla",
    rendezvous: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[PrivateGeneration]:
    """Generate text for each prompt with two-party secure computation, parties as local processes (loopback).

    Args:
        model_dir_or_model: an mpcgen model, a saved student folder, or a stage-1 Hugging Face teacher folder
            (imported with ``preset``).
        prompts: source texts (encoded as in training: ``[bos] + S + [sep]``) or ready token id lists.
        max_new_tokens: tokens generated per prompt (all steps always run; the text stops at the first eos).
        decoding: ``"tokens"`` (vanilla: argmax + one-hot lookup under MPC) or ``"er"`` (Embedding Resending);
            default ``er`` for a model trained with ER, else ``tokens``.
        provider: ``"ttp"`` (a dealer process; the default) or ``"tfp"`` (insecure; benchmark parity).
        weights: ``"private"`` (the server secret-shares its weights) or ``"public"`` (both parties hold them).
        fixed_weights: ``private`` only: open each weight's mask once per session and reuse it for every product
            (:mod:`mpcgen.mpc.fixed`; setup reported apart as ``stats.setup_*``); ``False``: a fresh Beaver triple
            per product, CrypTen's default.
        timeout: seconds for the whole run (then every process is stopped and an error raised).
        tokenizer: a tokenizer or its folder (default: the one saved with the model).
        preset: the preset a teacher folder is imported into.
        rendezvous: ``tcp://127.0.0.1:PORT`` to meet on a TCP port (default: a file in a temporary folder).
        batch_size: most prompts per batch; prompts of equal length share a batch (see the module docstring).
        progress: show a progress bar per generated token (stderr).

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
    from mpcgen.mpc.encrypt import check_weights_mode
    from mpcgen.mpc.launch import CLIENT, SERVER, check_provider, check_rendezvous, run_parties

    _check_common(max_new_tokens)
    check_provider(provider)
    check_weights_mode(weights)
    model = load_model(model_dir_or_model, preset=preset)
    tok = resolve_tokenizer(model, tokenizer)
    decoding = decoding or default_decoding(model.config)
    check_decoding(decoding, model.config)
    ids = encode_prompts(prompts, tok, model.config, max_new_tokens)
    plan_batches([len(p) for p in ids], batch_size)  # checks batch_size here rather than in a party
    if rendezvous is not None:
        check_rendezvous(rendezvous, SERVER)  # a port in use is a one-line error here, before any process starts
    bare = _without_tokenizer(model)
    fn = functools.partial(generation_party, max_new_tokens=max_new_tokens, decoding=decoding, weights=weights,
                           fixed_weights=fixed_weights, batch_size=batch_size, progress=progress)
    results = run_parties(fn, provider=provider, timeout=timeout, rendezvous=rendezvous,
                          party_args={SERVER: (bare,), CLIENT: (bare if weights == "public" else None, ids)})
    client = results[CLIENT]
    return results_for(prompts, ids, client.tokens, client.stats, client.reports, tok, _eos_id(tok, model.config))


def generate_plain(
    model_dir_or_model: ModelLike,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 32,
    decoding: str | None = None,
    tokenizer: Any = None,
    preset: str = "vanilla",
    prepare: bool = True,
    batch_size: int = 8,
    progress: bool = False,
) -> list[PrivateGeneration]:
    """The plaintext reference: the same model, prompts and decoding loop as :func:`generate_private`, no MPC.

    Arguments as for :func:`generate_private`; ``prepare`` runs the model in the inference form the server would
    (merged / frozen; exact). Stats hold wall times only (``mode="plaintext"``).
    """
    from tqdm.auto import tqdm

    from mpcgen.mpc.runtime import prepare_for_inference

    _check_common(max_new_tokens)
    model = load_model(model_dir_or_model, preset=preset)
    tok = resolve_tokenizer(model, tokenizer)
    decoding = decoding or default_decoding(model.config)
    check_decoding(decoding, model.config)
    ids = encode_prompts(prompts, tok, model.config, max_new_tokens)
    runnable = prepare_for_inference(model) if prepare else model
    tokens: list[list[int]] = [[] for _ in ids]
    stats: list[Any] = [None] * len(ids)
    with torch.no_grad(), tqdm(total=len(ids) * max_new_tokens, desc=f"plaintext generation ({decoding})",
                               unit="tok", disable=not progress) as bar:
        for batch in plan_batches([len(p) for p in ids], batch_size):
            hooks = TimedHooks()
            out = greedy_decode(runnable, {"input_ids": torch.tensor([ids[i] for i in batch])},
                                max_new_tokens=max_new_tokens, decoding=decoding, hooks=hooks)
            bar.update(len(batch) * max_new_tokens)
            batch_stats = _make_stats(_intervals(hooks.marks), mode="plaintext", decoding=decoding,
                                      preset=model.config.preset, provider=None, weights=None,
                                      prompt_tokens=len(ids[batch[0]]), batch_size=len(batch))
            for row, i in enumerate(batch):
                tokens[i], stats[i] = out[row].tolist(), batch_stats
    return results_for(prompts, ids, tokens, stats, None, tok, _eos_id(tok, model.config))
