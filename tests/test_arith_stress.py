"""Fixed-point accuracy of the runtime's products, in real two-party runs (a small ``scripts/stress_arith.py``).

What must stay true (``docs/arithmetic.md``):

* in range (|products| < 2^10 here), every product the runtime runs (fixed-weight matmuls of both sides, the tied
  LM head, gains, secret products, squares, public scalars) is within 2 LSB (2^-15) of float64 on the encoded
  inputs, for both providers and fixed masks on and off. Errors of 1-2 LSB need both shares of one sign, and a wrap
  of the local truncation (a 2^48-LSB error) needs the same; each has probability |v| / 2^32 per element, so a
  launch here fails by chance with probability 3e-5 (the sum over its elements of |v| / 2^32);
* every reveal decodes exactly: CrypTen 0.4.1's decoder reads some negative values 1.0 too low (the rare wrong
  logit), :func:`mpcgen.mpc.encrypt.reveal` does not.
"""

from __future__ import annotations

import pytest
import torch

from benchmark import arith
from mpcgen.mpc.launch import run_parties
from mpcgen.mpc.roles import CLIENT, PROVIDERS, SERVER

SEED = 3
# Values CrypTen's decoder misreads (-(k + r / 2^16) with k + r > 65,535) and neighbours it reads right.
CRAFTED_RING = torch.tensor([-(10 * 65536 + 65530), -(38 * 65536 + 65535), -(200 * 65536 + 65400), -65536 * 3,
                             -(10 * 65536 + 5), -1, 0, 5 * 65536 + 65535, -(65535 * 65536)], dtype=torch.long)


def _cases() -> list[arith.Case]:
    return arith.geometry_cases("tiny", 32, 256, 4)  # no large probes: their wraps are expected


@pytest.mark.parametrize("fixed_on", [True, False], ids=["fixed", "beaver"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_products_within_two_lsb(provider: str, fixed_on: bool) -> None:
    cases = _cases()
    out = run_parties(arith.stress_party, provider=provider, timeout=300, args=(cases, 0, SEED, fixed_on))[CLIENT]
    total = arith.empty_stats()
    for case in cases:
        stats = arith.empty_stats()
        arith.analyse(stats, case, out["results"][case.name], SEED, 0)
        hist = stats["histogram"]["protocol"]
        assert sum(hist[2:]) == 0, (case.name, dict(zip(arith.LABELS, hist)), stats["worst"]["protocol"][:3])
        arith.merge_stats(total, stats)
    hist = total["histogram"]["protocol"]
    assert total["elements"] == sum(hist) == sum(c.numel() for c in cases)
    assert hist[0] > 0.99 * total["elements"]  # below one LSB but for the rare same-sign shares
    assert total["over_half"]["protocol"] == 0 and total["wraps_observed"] == 0
    assert total["max_abs_value"] < 2.0 ** 10  # what "in range" means here


def test_decode_is_exact_and_crypten_misreads() -> None:
    """The exact decoder against integers; CrypTen's as pinned (crypten==0.4.1), to show what it replaces."""
    from mpcgen.mpc.encrypt import decode

    exact = CRAFTED_RING.double() / 65536
    assert torch.equal(decode(CRAFTED_RING, 65536).double(), exact.float().double())
    crypten_error = arith.crypten_decode(CRAFTED_RING).double() - exact
    assert crypten_error[:4].tolist() == [-1.0, -1.0, -1.0, 0.0]  # k + r > 65535 (r = 0: only k > 65535)
    assert crypten_error[4:8].abs().max() < 1e-6
    assert crypten_error[8].item() == 0.0  # k = 65535, r = 0
    rates = arith.decode_error_rate(exact)
    assert rates[0].item() == pytest.approx(10 / 65536) and rates[-2].item() == 0.0


def _reveal_party(rank: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    from mpcgen.mpc.compat import crypten
    from mpcgen.mpc.encrypt import reveal

    values = CRAFTED_RING.double() / 65536
    secret = crypten.cryptensor(values.float() if rank == SERVER else torch.zeros(values.shape), src=SERVER)
    with crypten.no_grad():
        logits = secret * 1.0 + 0.0  # through a (public) product and its truncation, as logits come
    return reveal(logits, dst=CLIENT), logits.get_plain_text(dst=CLIENT)


def test_reveal_decodes_exactly_in_parties() -> None:
    (server_mine, _), (mine, theirs) = run_parties(_reveal_party, provider="tfp", timeout=120)
    assert server_mine is None  # only the client receives
    expected = (CRAFTED_RING.double() / 65536).float()
    assert torch.allclose(mine.double(), expected.double(), atol=2 / 65536, rtol=0)
    assert (theirs.double() - expected.double()).abs().max() > 0.99  # CrypTen's get_plain_text misreads
