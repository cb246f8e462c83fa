"""What a generation returns: the text and tokens per prompt, and its costs by phase (no CrypTen needed).

Costs are :class:`~mpcgen.mpc.costs.CostReport` s, one per phase of the batch a prompt ran in: the prompt (sharing
it and its forward pass / encoding), one per generated token, and the finish (under ``tokens`` the ids' reveal;
under ``er`` the LM head on the stacked states and the logits' reveal). Benchmarks, the frontier and the CLI read
these same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mpcgen.mpc.costs import NETWORKS, Cost, CostReport


@dataclass
class GenerationStats:
    """Costs of generating one batch (over both parties under MPC; the batch's ``batch_size`` prompts of one length
    share every round and byte).

    ``phases``: prompt, each generated token, finish (see the module docstring). ``run``: the whole batch with each
    party's counters (MPC). ``setup``: once per session (sharing the weights and, with fixed weights, opening their
    masks), shared by every batch of the run and not part of the other figures.
    """

    mode: str  # "mpc" or "plaintext"
    decoding: str
    preset: str
    provider: str | None
    weights: str | None
    prompt_tokens: int
    batch_size: int
    phases: list[CostReport]
    run: CostReport | None = None
    setup: CostReport | None = None
    fixed_weights: bool = False

    @property
    def new_tokens(self) -> int:
        return len(self.phases) - 2

    @property
    def prompt(self) -> CostReport:
        return self.phases[0]

    @property
    def steps(self) -> list[CostReport]:
        return self.phases[1:-1]

    @property
    def finish(self) -> CostReport:
        return self.phases[-1]

    @property
    def total(self) -> Cost:
        """The batch's figures (the metered run under MPC; the phases' sum in plaintext)."""
        return self.run.total if self.run is not None else CostReport.sum(self.phases).total

    @property
    def groups(self) -> dict[str, Cost]:
        return self.run.groups if self.run is not None else {}

    def after_prompt(self) -> CostReport:
        """Everything after the prompt phase: the generated tokens and the finish."""
        return CostReport.sum(self.phases[1:])

    def per_token(self) -> dict[str, float]:
        """Seconds, rounds, online and dealer bytes (and the other metrics) per generated token: everything after
        the prompt spread over the generated tokens."""
        per = self.after_prompt().total.scaled(1.0 / max(1, self.new_tokens))
        return per.to_dict()

    @property
    def projected_s(self) -> dict[str, float]:
        """LAN / WAN projections of the batch's run time."""
        return {name: self.total.projected(name) for name in NETWORKS} if self.mode == "mpc" else {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: settings, totals (``wall_s``, ``rounds``, ``bytes``, ...), ``per_token`` and every phase."""
        total = self.total
        return {
            "mode": self.mode, "decoding": self.decoding, "preset": self.preset, "provider": self.provider,
            "weights": self.weights, "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
            "batch_size": self.batch_size, "fixed_weights": self.fixed_weights,
            "wall_s": total.seconds, "rounds": total.rounds, "bytes": total.bytes,
            "dealer_rounds": total.dealer_rounds, "dealer_bytes": total.dealer_bytes,
            "per_token": self.per_token(), "projected_s": self.projected_s,
            "phases": [p.to_dict() for p in self.phases],
            "run": None if self.run is None else self.run.to_dict(),
            "setup": None if self.setup is None else self.setup.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationStats":
        """Inverse of :meth:`to_dict` (e.g. a party's result file)."""
        def report(d: Any) -> CostReport | None:
            return None if d is None else CostReport.from_dict(d)

        return cls(mode=data["mode"], decoding=data["decoding"], preset=data["preset"], provider=data["provider"],
                   weights=data["weights"], prompt_tokens=data["prompt_tokens"], batch_size=data["batch_size"],
                   phases=[CostReport.from_dict(p) for p in data["phases"]], run=report(data.get("run")),
                   setup=report(data.get("setup")), fixed_weights=bool(data.get("fixed_weights")))


@dataclass
class PrivateGeneration:
    """What the client gets for one prompt.

    ``tokens`` are the generated ids up to and including the first eos; ``all_tokens`` every step's id (under MPC
    the loop always runs ``max_new_tokens`` steps); ``text`` the decoded ``tokens`` (empty without a tokenizer);
    ``stats`` the costs of the batch the prompt ran in.
    """

    text: str
    tokens: list[int]
    stats: GenerationStats
    prompt: str | None = None
    prompt_ids: list[int] = field(default_factory=list)
    all_tokens: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"prompt": self.prompt, "text": self.text, "tokens": self.tokens, "all_tokens": self.all_tokens,
                "prompt_ids": self.prompt_ids, "stats": self.stats.to_dict()}


@dataclass
class PartyGeneration:
    """What one party ends with. The server: its own counters per batch only. The client: tokens and stats."""

    rank: int
    costs: list[Any]  # this party's PartyCost per batch
    tokens: list[list[int]] | None = None
    stats: list[GenerationStats] | None = None  # per prompt (the stats of its batch)


__all__ = ["GenerationStats", "PartyGeneration", "PrivateGeneration"]
