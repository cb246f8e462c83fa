"""The client's token choice under ``client`` decoding: greedy, or sampling with temperature, top-k and top-p.

The client runs this in plaintext on the logits revealed to it; the server sees neither the settings nor the seed
nor the choice (it only receives a secret sharing of the chosen token's one-hot). Sampling is reproducible: the
same seed, logits and settings give the same tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from mpcgen.errors import MpcgenError


@dataclass
class TokenChooser:
    """``(B, vocab) logits -> (B,) token ids``.

    ``temperature`` 0 (the default) is greedy (argmax); above 0 the logits are divided by it and a token is drawn
    after keeping the ``top_k`` most likely tokens (0: all) and the smallest set whose probability reaches
    ``top_p`` (1: all), from a generator seeded with ``seed`` (None: a fresh seed from the OS).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    _generator: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise MpcgenError(f"temperature must be >= 0 (0: greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise MpcgenError(f"top_k must be an integer >= 0 (0: no limit), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise MpcgenError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.temperature == 0 and (self.top_k or self.top_p < 1):
            raise MpcgenError("top_k / top_p apply to sampling: set a temperature > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.greedy:
            return logits.argmax(dim=-1)
        if self._generator is None:
            seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            self._generator = torch.Generator().manual_seed(seed)
        scores = logits / self.temperature
        if self.top_k:
            kth = scores.topk(min(self.top_k, scores.size(-1)), dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            # drop a token once the ones before it already reach top_p (the most likely token always stays)
            drop = cumulative - sorted_scores.softmax(dim=-1) >= self.top_p
            scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
        probs = scores.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self._generator).squeeze(-1)


__all__ = ["TokenChooser"]
