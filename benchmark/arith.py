"""Stress CrypTen's fixed-point arithmetic as the runtime uses it, in real two-party runs, against float64.

CrypTen encodes a real ``v`` as the int64 ring element ``t = trunc(v * 2^16)``. A product of two encoded values
carries ``2^32``; the two parties then divide their own shares by ``2^16`` (``ArithmeticSharedTensor.div_``,
rounding toward zero: CrypTen's 2-party truncation is local). The result is within one LSB (``2^-16``) when the
shares have opposite signs and their integer sum is ``t``; it is within two LSB when they share a sign, and off by
``2^48`` LSB when their integer sum wrapped around the ring. Each of the two happens with probability ``|t| / 2^64``
for a uniformly random share, i.e. ``|v| / 2^32`` for a product of value ``v``.

:func:`geometry_cases` are the products the runtime runs (fixed-weight ``x W`` of ``d x d`` and ``d x 4d``, the
tied LM head ``h E^T``, ``W x`` with a causal-masked constant-attention weight, elementwise gains, secret-by-secret
products, squares, public scalars), plus large-magnitude probes ``|x y| ~ 2^k`` (:func:`large_cases`).
:func:`stress_party` runs them on secret shares; :func:`analyse` compares what the client receives with float64:

* ``protocol``: the revealed ring value decoded exactly, against float64 arithmetic on the *encoded* inputs (what
  the protocol is asked to compute; isolates truncation and wraps);
* ``crypten_decode``: the same ring values decoded by CrypTen's ``FixedPointEncoder.decode`` (what
  ``get_plain_text`` returns);
* ``total``: exact decoding against float64 on the unencoded float inputs (adds the inputs' encoding error).

:func:`token_party` counts, in a real private generation, every truncation (each element divided by a public
integer) and ``sum |t| / 2^64``: the expected number of wraps per generated token.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

SCALE = 1 << 16  # CrypTen's default encoder: 16 fractional bits
# Histogram of |error| in LSB (2^-16): bin "0" holds |e| < 1, bin "2^k" holds 2^k <= |e| < 2^(k+1), the last bin
# ">2^20" |e| >= 2^21. An error of 1.0 (2^16 LSB, plus the usual fraction of an LSB) lands in "2^16".
EDGES = [float(1 << k) for k in range(22)]
LABELS = ["0"] + [f"2^{k}" for k in range(21)] + [">2^20"]
HALF = 0.5 * SCALE  # an error of 0.5 in real units, in LSB
KINDS = ("protocol", "crypten_decode", "total")


@dataclasses.dataclass(frozen=True)
class Case:
    """One product the runtime runs. ``op``: ``matmul`` (x W), ``matmul_left`` (W x), ``mul_weight`` (x * W,
    broadcast), ``mul_secret`` (x * y, both the client's), ``square``, ``mul_public`` (x * a public scalar).
    ``view``: ``t`` (the weight enters transposed: the tied LM head ``E^T``) or ``causal`` (0/1 lower-triangular
    mask). ``exp``: instead of Gaussians, magnitudes ``|x|, |w| in [2^(exp/2), 2^(exp/2 + 1/2))`` so that products
    land in ``[2^exp, 2^(exp+1))``. ``weight``: a name shared by cases that multiply the same weight (same shape
    and std), as every product of a session reuses the model's weights."""

    name: str
    op: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...] = ()
    x_std: float = 1.0
    w_std: float = 1.0
    view: str = ""
    public: float = 0.0
    exp: float | None = None
    weight: str = ""  # cases with one name here share one weight per trial (drawn and secret-shared once)

    @property
    def has_weight(self) -> bool:
        return self.op in ("matmul", "matmul_left", "mul_weight", "mul_secret")

    def numel(self) -> int:
        """Output elements per trial."""
        x = torch.empty(self.x_shape, device="meta")
        w = torch.empty(self.w_shape, device="meta") if self.has_weight else None
        return int(reference(self, x, w).numel())


def geometry_cases(tag: str, d: int, vocab: int, tokens: int) -> list[Case]:
    """The runtime's products at width ``d`` and vocabulary ``vocab`` for ``tokens`` positions. Magnitudes: hidden
    states ~N(0, 2), post-norm states ~N(0, 1), weights ~N(0, 0.05) (GPT-2's are 0.02-0.15); the tied token table
    N(0, 10 / sqrt(d)) gives logits of std ~10, and with states of std 10 (``lm_head_wide``) ~100, the magnitude of
    GPT-2's raw logits."""
    per_row = tokens * d
    return [
        Case(f"{tag}/linear_dxd", "matmul", (tokens, d), (d, d), 2.0, 0.05),
        Case(f"{tag}/ffn_up_dx4d", "matmul", (tokens, d), (d, 4 * d), 2.0, 0.05),
        Case(f"{tag}/ffn_down_4dxd", "matmul", (tokens, 4 * d), (4 * d, d), 1.0, 0.05),
        Case(f"{tag}/lm_head", "matmul", (tokens, d), (vocab, d), 1.0, 10.0 / math.sqrt(d), view="t",
             weight=f"{tag}/token_table"),
        Case(f"{tag}/lm_head_wide", "matmul", (max(1, tokens // 4), d), (vocab, d), 10.0, 10.0 / math.sqrt(d),
             view="t", weight=f"{tag}/token_table"),
        Case(f"{tag}/const_attention", "matmul_left", (tokens, d), (tokens, tokens), 2.0, 1.0 / tokens,
             view="causal"),
        Case(f"{tag}/gain", "mul_weight", (64 * tokens, d), (d,), 2.0, 1.0),
        Case(f"{tag}/mul_secret", "mul_secret", (64 * per_row // d, d), (64 * per_row // d, d), 2.0, 2.0),
        Case(f"{tag}/square", "square", (64 * per_row // d, d), x_std=3.0),
        Case(f"{tag}/mul_public", "mul_public", (64 * per_row // d, d), x_std=3.0, public=0.125),
    ]


def large_cases(exps: list[float], n: int) -> list[Case]:
    """Elementwise fixed-weight products of magnitude ``2^exp`` (logits far beyond the trained models')."""
    return [Case(f"large/2^{e:g}", "mul_weight", (n // 1024, 1024), (n // 1024, 1024), exp=e) for e in exps]


def make_inputs(case: Case, seed: int, trial: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The client's ``x`` and the server's ``w`` (``y`` for ``mul_secret``) of one trial, float32, from a seed that
    both the parties and the reference derive (each party shares only its own tensor)."""
    def draw(key: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
        gen = torch.Generator().manual_seed(hash_seed(seed, key, trial))
        if case.exp is None:
            return torch.randn(shape, generator=gen) * std
        sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
        return sign * 2.0 ** (case.exp / 2 + torch.rand(shape, generator=gen) / 2)

    x = draw(case.name, case.x_shape, case.x_std)
    w = draw(case.weight or case.name + "/w", case.w_shape, case.w_std) if case.has_weight else None
    return x, w


def hash_seed(seed: int, name: str, trial: int) -> int:
    """A seed per (run seed, case, trial), the same in every process (Python's str hash is salted per process)."""
    h = seed * 1_000_003 + trial
    for ch in name.encode():
        h = (h * 131 + ch) % (1 << 61)
    return h


def encode(t: torch.Tensor) -> torch.Tensor:
    """CrypTen's encoding of a float32 tensor: ``(2^16 * t).long()`` (rounds toward zero)."""
    return (SCALE * t).long()


def _causal(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n))


def reference(case: Case, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``case``'s product on plain tensors (any dtype; ``meta`` for shapes)."""
    if case.op == "matmul":
        return x.matmul(w.transpose(0, 1) if case.view == "t" else w)
    if case.op == "matmul_left":
        mask = _causal(w.size(0)).to(device=w.device, dtype=w.dtype)
        return (w * mask).matmul(x)
    if case.op in ("mul_weight", "mul_secret"):
        return x * w
    if case.op == "square":
        return x * x
    if case.op == "mul_public":
        return x * (int(case.public * SCALE) / SCALE)  # the scalar as CrypTen encodes it
    raise ValueError(f"unknown op {case.op!r}")


# ------------------------------------------------------------------------------------------------- the parties


def _secret_product(case: Case, x: Any, w: Any) -> Any:
    """``case``'s product on ``MPCTensor`` operands, written as the models write it."""
    if case.op == "matmul":
        return x.matmul(w.transpose(0, 1) if case.view == "t" else w)
    if case.op == "matmul_left":
        return (w * _causal(w.size(0))).matmul(x)  # a public 0/1 mask keeps a fixed weight fixed
    if case.op in ("mul_weight", "mul_secret"):
        return x * w
    if case.op == "square":
        return x.square()
    return x * case.public


def stress_party(rank: int, cases: list[Case], trial: int, seed: int, fixed_on: bool) -> dict[str, Any]:
    """Run every case of one trial on secret shares. Returns ``results``: on the client the revealed ring values
    (int64, scale 2^16, not decoded) by case name, on the server ``{}``; ``seconds``: wall time per case. Call
    inside an initialised party (``run_parties``)."""
    from mpcgen.mpc import fixed
    from mpcgen.mpc.compat import crypten
    from mpcgen.mpc.roles import CLIENT, SERVER

    out: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    shared: dict[str, Any] = {}  # weights by Case.weight: shared (and fixed) once per trial
    with torch.no_grad(), crypten.no_grad():
        for case in cases:
            start = time.perf_counter()
            x_plain, w_plain = make_inputs(case, seed, trial)
            # Only the owner's values enter a sharing: the other party passes zeros of the public shape.
            x = crypten.cryptensor(x_plain if rank == CLIENT else torch.zeros_like(x_plain), src=CLIENT)
            w = shared.get(case.weight) if case.weight else None
            if case.op == "mul_secret":  # a second activation of the client's
                w = crypten.cryptensor(w_plain if rank == CLIENT else torch.zeros_like(w_plain), src=CLIENT)
            elif case.has_weight and w is None:
                w = crypten.cryptensor(w_plain if rank == SERVER else torch.zeros_like(w_plain), src=SERVER)
                if fixed_on:
                    fixed.fix_weight(w)
                if case.weight:
                    shared[case.weight] = w
            ring = _secret_product(case, x, w).reveal(dst=CLIENT)
            if rank == CLIENT:
                out[case.name] = ring
            seconds[case.name] = time.perf_counter() - start
    return {"results": out, "seconds": seconds}


# ------------------------------------------------------------------------------------------------- analysis


def crypten_decode(ring: torch.Tensor) -> torch.Tensor:
    """What CrypTen's ``get_plain_text`` returns for these ring values (float32)."""
    from mpcgen.mpc.compat import crypten

    return crypten.encoder.FixedPointEncoder(precision_bits=16).decode(ring)


def empty_stats() -> dict[str, Any]:
    return {"elements": 0, "histogram": {k: [0] * len(LABELS) for k in KINDS}, "over_half": dict.fromkeys(KINDS, 0),
            "wraps_observed": 0, "wraps_expected": 0.0, "decode_errors_expected": 0.0, "max_abs_value": 0.0,
            "worst": {k: [] for k in KINDS}}


def _bins(err_lsb: torch.Tensor) -> list[int]:
    idx = torch.bucketize(err_lsb.abs(), torch.tensor(EDGES, dtype=torch.float64), right=True)
    return torch.bincount(idx.flatten(), minlength=len(LABELS)).tolist()


def analyse(stats: dict[str, Any], case: Case, ring: torch.Tensor, seed: int, trial: int, *, worst: int = 5
            ) -> None:
    """Add one trial's errors of ``case`` to ``stats`` (see :func:`empty_stats`), in LSB of 2^-16."""
    x, w = make_inputs(case, seed, trial)
    xq = encode(x).double() / SCALE
    wq = None if w is None else encode(w).double() / SCALE
    ref = reference(case, xq, wq)  # float64: exact for these magnitudes (|products| < 2^21 summed < 2^53 LSB^2)
    ref_float = reference(case, x.double(), None if w is None else w.double())
    got = ring.double() / SCALE
    decoded = {"protocol": got, "crypten_decode": crypten_decode(ring).double(), "total": got}
    refs = {"protocol": ref, "crypten_decode": ref, "total": ref_float}
    errors = {kind: (decoded[kind] - refs[kind]) * SCALE for kind in KINDS}
    stats["elements"] += ring.numel()
    for kind, err in errors.items():
        stats["histogram"][kind] = [a + b for a, b in zip(stats["histogram"][kind], _bins(err))]
        stats["over_half"][kind] += int((err.abs() >= HALF).sum())
        flat = err.abs().flatten()
        top = torch.topk(flat, min(worst, flat.numel()))
        for value, index in zip(top.values.tolist(), top.indices.tolist()):
            stats["worst"][kind].append({"case": case.name, "trial": trial, "index": index,
                                         "error_lsb": float(err.flatten()[index]), "abs_error": value / SCALE,
                                         "got": float(decoded[kind].flatten()[index]),
                                         "reference": float(refs[kind].flatten()[index])})
        stats["worst"][kind] = sorted(stats["worst"][kind], key=lambda r: -abs(r["error_lsb"]))[:worst]
    # A wrap costs 2^48 LSB; nothing else comes near 2^20.
    stats["wraps_observed"] += int((errors["protocol"].abs() > 2.0 ** 20).sum())
    stats["wraps_expected"] += float(ref.abs().sum()) / 2.0 ** 32  # P(wrap) = |v| 2^32 / 2^64 per element
    stats["decode_errors_expected"] += float(decode_error_rate(ref).sum())
    stats["max_abs_value"] = max(stats["max_abs_value"], float(ref.abs().max()))


def decode_error_rate(values: torch.Tensor) -> torch.Tensor:
    """Per value, the chance that CrypTen's decoder reads it 1.0 too low, over its low (fraction) bits: a negative
    ``-(k + f)`` is misread when ``k + r > 65535`` (``r`` its fraction in LSB), i.e. for ``k`` of the 65,536
    fractions."""
    k = values.abs().floor()
    return torch.where(values < 0, (k / SCALE).clamp(max=1.0), torch.zeros_like(values))


def merge_stats(total: dict[str, Any], part: dict[str, Any], *, worst: int = 5) -> None:
    """Add ``part``'s counts to ``total`` (both from :func:`empty_stats`)."""
    total["elements"] += part["elements"]
    for kind in KINDS:
        total["histogram"][kind] = [a + b for a, b in zip(total["histogram"][kind], part["histogram"][kind])]
        total["over_half"][kind] += part["over_half"][kind]
        total["worst"][kind] = sorted(total["worst"][kind] + part["worst"][kind],
                                      key=lambda r: -abs(r["error_lsb"]))[:worst]
    for key in ("wraps_observed", "wraps_expected", "decode_errors_expected"):
        total[key] += part[key]
    total["max_abs_value"] = max(total["max_abs_value"], part["max_abs_value"])


# ------------------------------------------------------------------------------------------ truncations per token


class TruncationCounter:
    """Counts every local truncation of this party (``ArithmeticSharedTensor.div_`` by a public integer): elements,
    ``sum |t| / 2^64`` (the expected number of wraps, ``t`` the value being divided, as a ring element) and the
    wraps that happened (both shares' integer sum outside int64). Measurement only: it opens every value it sees
    (an ``all_gather`` of the shares per division), so it must never run in a deployment."""

    def __init__(self) -> None:
        self.elements = 0
        self.expected = 0.0
        self.observed = 0
        self.max_abs = 0.0
        self.marks: list[dict[str, Any]] = []
        self._original: Any = None

    def snapshot(self, label: str) -> None:
        self.marks.append({"label": label, "elements": self.elements, "expected_wraps": self.expected,
                           "observed_wraps": self.observed, "max_abs_value": self.max_abs})

    def install(self) -> "TruncationCounter":
        from mpcgen.mpc.compat import crypten  # first: makes CrypTen importable

        ArithmeticSharedTensor = crypten.mpc.primitives.arithmetic.ArithmeticSharedTensor
        original = self._original = ArithmeticSharedTensor.div_
        counter = self

        def counting_div_(tensor: Any, y: Any) -> Any:
            divisor = y
            if isinstance(divisor, float) and int(divisor) == divisor:
                divisor = int(divisor)
            if isinstance(divisor, int) and divisor > 1:
                shares = crypten.communicator.get().all_gather(tensor.share)
                s0, s1 = shares[0], shares[1]
                t = s0 + s1  # the ring value (int64 arithmetic wraps like the ring)
                # The integer sum left int64 iff both shares have one sign and the wrapped sum the other.
                wrapped = ((s0 >= 0) & (s1 >= 0) & (t < 0)) | ((s0 < 0) & (s1 < 0) & (t >= 0))
                counter.elements += t.numel()
                counter.expected += float(t.double().abs().sum()) / 2.0 ** 64
                counter.observed += int(wrapped.sum())
                # The result's value (default precision: products arrive at 2^32, whatever encoder they carry)
                value = float(t.double().abs().max()) / (SCALE * divisor) if t.numel() else 0.0
                counter.max_abs = max(counter.max_abs, value)
            return original(tensor, y)

        ArithmeticSharedTensor.div_ = counting_div_
        return self

    def uninstall(self) -> None:
        from mpcgen.mpc.compat import crypten

        ArithmeticSharedTensor = crypten.mpc.primitives.arithmetic.ArithmeticSharedTensor
        if self._original is not None:
            ArithmeticSharedTensor.div_ = self._original
            self._original = None


def token_party(rank: int, config: dict[str, Any], prompt_len: int, new_tokens: int, decoding: str, seed: int
                ) -> dict[str, Any]:
    """A private generation on random weights of ``config`` with :class:`TruncationCounter` on; returns this
    party's cumulative counts at every mark of the loop (``start``, ``prompt``, ``token`` ..., ``finish``)."""
    from mpcgen.generation import private
    from mpcgen.models.geometry import random_model
    from mpcgen.mpc.roles import CLIENT, SERVER

    counter = TruncationCounter().install()
    original_mark = private.MpcHooks.mark

    def mark(hooks: Any, label: str) -> None:
        counter.snapshot(label)
        original_mark(hooks, label)

    private.MpcHooks.mark = mark
    try:
        model = random_model(config, seed) if rank == SERVER else None
        gen = torch.Generator().manual_seed(seed)
        prompt = torch.randint(3, config["vocab_size"], (prompt_len,), generator=gen).tolist()
        private.generation_party(rank, model, [prompt] if rank == CLIENT else None, max_new_tokens=new_tokens,
                                 decoding=decoding)
    finally:
        private.MpcHooks.mark = original_mark
        counter.uninstall()
    return {"marks": counter.marks}


def per_token(marks: list[dict[str, Any]]) -> dict[str, Any]:
    """One party's counts for the prompt (its forward pass) and per generated token (the mean over the steps after
    the prompt; ``finish``, e.g. ``er``'s final LM head, is spread over the steps)."""
    def between(a: dict[str, Any], b: dict[str, Any], n: int = 1) -> dict[str, float]:
        return {"truncated_elements": (b["elements"] - a["elements"]) / n,
                "expected_wraps": (b["expected_wraps"] - a["expected_wraps"]) / n}

    start = marks[0]
    prompt = next(m for m in marks if m["label"] == "prompt")
    steps = sum(1 for m in marks if m["label"] == "token")
    return {"steps": steps, "prompt": between(start, prompt), "per_token": between(prompt, marks[-1], steps),
            "observed_wraps_in_run": marks[-1]["observed_wraps"] - start["observed_wraps"],
            "max_abs_value": marks[-1]["max_abs_value"]}


__all__ = ["Case", "EDGES", "LABELS", "TruncationCounter", "analyse", "crypten_decode",
           "decode_error_rate", "empty_stats", "geometry_cases", "large_cases", "make_inputs",
           "merge_stats", "per_token", "reference", "stress_party", "token_party"]
