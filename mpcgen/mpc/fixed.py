"""Fixed-operand products: open each private weight's mask once per session, not once per product.

CrypTen multiplies two secret tensors with a fresh Beaver triple ``(A, B, C = A B)`` every time and opens both
``x - A`` and ``W - B``. When ``W`` is a server weight that stays fixed for the whole session, reopening a fresh mask
of it for every generated token is most of the traffic. Here each weight ``W`` gets its own random mask ``B`` once:

* **setup** (once per weight and session): the provider deals shares of a fresh uniformly random ``B``; the parties
  open ``F = W - B`` (one round, the weight's size). Each party then holds ``G_i`` with ``G_0 = F + B_0`` and
  ``G_1 = B_1``: a re-sharing of ``W`` (``G_0 + G_1 = W``) that every other use of the weight (additions, public
  products) keeps using unchanged.
* **each product** ``x W`` (or ``W y``): the provider deals a fresh ``A`` of the activation's size and
  ``C = A B`` for *this weight's* ``B``; the parties open only ``E = x - A`` (the activation's size) and compute
  ``x W = E F + E B + A F + C``, i.e. party ``i`` holds ``E G_i + A_i F + C_i``.

Security (see ``docs/fixed_weights.md``): ``F`` is ``W`` plus a uniform ring element, so it is uniform and says
nothing about ``W``; ``E`` is ``x`` plus a fresh uniform ``A``. ``B`` is never opened, and is drawn anew for every
weight, so no two openings ever share a mask (two weights under one ``B`` would reveal ``W_1 - W_2``). The dealer
(``ttp``) learns ``A``, ``B`` and ``C`` only, all random and independent of ``x`` and ``W``. A session is one
launch of the parties: masks live in the parties' and the dealer's memory and die with the processes. ``tfp`` runs
the same protocol with rank 0 dealing (CrypTen's insecure benchmark mode: rank 0 knows every mask).

Views. Model code slices, transposes and masks weights before multiplying (constant attention takes a causal-masked
slice, the tied LM head the transposed token table). :class:`FixedShare` keeps such *linear views* (the ops in
:data:`VIEW_OPS`) fixed by applying them to ``G_i`` and ``F`` alike and recording them; the dealer replays them on
``B``. Any other op on a weight returns an ordinary share (still a correct sharing of the result), whose products
fall back to fresh Beaver triples.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Sequence

import torch

from mpcgen.errors import MpcgenError
from mpcgen.mpc.compat import crypten

logger = logging.getLogger(__name__)

from crypten.common.rng import generate_random_ring_element  # noqa: E402  (after the compat shim)
from crypten.mpc.primitives import beaver  # noqa: E402
from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor  # noqa: E402
from crypten.mpc.provider.ttp_provider import TTPClient, TTPServer  # noqa: E402

OPS = ("mul", "matmul")
# (name, arguments) of the linear, local ops a fixed weight keeps through; replayed in order by the dealer.
VIEW_OPS = ("getitem", "transpose", "unsqueeze", "squeeze", "reshape", "permute", "expand", "mask")
View = tuple[tuple[str, tuple[Any, ...]], ...]

_KEYS = itertools.count()  # per process; both parties fix the same weights in the same order
# What this process ran, for tests and logs: weights set up, fixed-operand products, opened values per kind.
COUNTERS = {"setups": 0, "products": 0, "setup_values": 0, "product_values": 0}
_TFP_MASKS: dict[int, torch.Tensor] = {}  # tfp: rank 0's plaintext masks, for this session only


def _encode_index(index: Any) -> Any:
    """An index as plain tuples: requests to the dealer go through CrypTen's restricted unpickler, which refuses
    ``slice`` and ``Ellipsis`` objects."""
    items = index if isinstance(index, tuple) else (index,)
    out = []
    for item in items:
        if isinstance(item, slice):
            out.append(("slice", item.start, item.stop, item.step))
        elif item is Ellipsis:
            out.append(("...",))
        elif item is None or isinstance(item, (int, torch.Tensor)):
            out.append(item)
        else:
            raise MpcgenError(f"cannot index a fixed weight with {type(item).__name__}")
    return tuple(out)


def _decode_index(encoded: tuple) -> tuple:
    return tuple(slice(*item[1:]) if isinstance(item, tuple) and item[0] == "slice" else
                 Ellipsis if isinstance(item, tuple) else item for item in encoded)


def apply_view(t: torch.Tensor, views: View) -> torch.Tensor:
    """Apply recorded view ops to a ring tensor (parties on ``G_i`` and ``F``, the dealer on ``B``)."""
    for name, args in views:
        if name == "getitem":
            t = t[_decode_index(args[0])]
        elif name == "mask":
            t = t * args[0]  # a public integer tensor (0/1 masks): exact in the ring, broadcasting as torch does
        elif name in VIEW_OPS:
            t = getattr(t, name)(*args)
        else:
            raise MpcgenError(f"unknown fixed-weight view op {name!r}")
    return t


def _product(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return getattr(torch, op)(a, b)


def _result_size(op: str, left: Sequence[int], right: Sequence[int]) -> torch.Size:
    """Shape of ``op(left, right)`` without computing it."""
    return _product(op, torch.empty(tuple(left), device="meta"), torch.empty(tuple(right), device="meta")).size()


class FixedShare(ArithmeticSharedTensor):
    """A party's share ``G_i`` of a server weight whose mask ``B`` was opened once (``F = W - B``).

    ``public`` is ``F`` (the same on both parties), ``key`` names the weight's mask at the provider, ``views`` the
    linear ops applied since setup. Products with an ordinary secret tensor take the fixed-operand protocol.
    """

    key: int
    public: torch.Tensor
    views: View

    @classmethod
    def create(cls, share: torch.Tensor, public: torch.Tensor, key: int, encoder: Any, views: View = ()
               ) -> "FixedShare":
        out = cls(src=crypten.mpc.primitives.arithmetic.SENTINEL)
        out.share, out.public, out.key, out.views, out.encoder = share, public, key, tuple(views), encoder
        return out

    def _view(self, name: str, args: tuple, apply: Any) -> "FixedShare":
        return FixedShare.create(apply(self.share), apply(self.public), self.key, self.encoder,
                                 self.views + ((name, args),))

    def __getitem__(self, index: Any) -> "FixedShare":
        encoded = _encode_index(index)
        return self._view("getitem", (encoded,), lambda t: t[_decode_index(encoded)])

    def transpose(self, dim0: int, dim1: int) -> "FixedShare":
        return self._view("transpose", (dim0, dim1), lambda t: t.transpose(dim0, dim1))

    def t(self) -> "FixedShare":
        return self.transpose(0, 1)

    def unsqueeze(self, dim: int) -> "FixedShare":
        return self._view("unsqueeze", (dim,), lambda t: t.unsqueeze(dim))

    def squeeze(self, *dim: int) -> "FixedShare":
        return self._view("squeeze", dim, lambda t: t.squeeze(*dim))

    def reshape(self, *shape: Any) -> "FixedShare":
        return self._view("reshape", shape, lambda t: t.reshape(*shape))

    view = reshape

    def permute(self, *dims: Any) -> "FixedShare":
        return self._view("permute", dims, lambda t: t.permute(*dims))

    def expand(self, *sizes: Any) -> "FixedShare":
        return self._view("expand", sizes, lambda t: t.expand(*sizes))

    def mul(self, y: Any) -> ArithmeticSharedTensor:
        """Products with a public integer-valued tensor (a 0/1 mask) stay fixed: applied exactly in the ring."""
        if torch.is_tensor(y) and not isinstance(y, ArithmeticSharedTensor) and bool((y == y.round()).all()):
            mask = y.long()
            return self._view("mask", (mask,), lambda t: t * mask)
        return super().mul(y)

    __mul__ = __rmul__ = mul

    def _arithmetic_function(self, y: Any, op: str, inplace: bool = False, *args: Any, **kwargs: Any
                             ) -> ArithmeticSharedTensor:
        # The weight on the left of a product (W y): CrypTen's path would clone it into a plain share first.
        if op in OPS and not inplace and _fresh(y) and not args and not kwargs:
            result = fixed_product(op, y, self, weight_left=True)
            return _rescale(result, self, y)
        return super()._arithmetic_function(y, op, inplace, *args, **kwargs)


def _fresh(y: Any) -> bool:
    """An ordinary secret operand (not itself a fixed weight)."""
    return isinstance(y, ArithmeticSharedTensor) and not isinstance(y, FixedShare)


def _rescale(result: ArithmeticSharedTensor, x: ArithmeticSharedTensor, y: ArithmeticSharedTensor
             ) -> ArithmeticSharedTensor:
    """CrypTen's fixed-point bookkeeping after a private product (``_arithmetic_function``): divide by the scale
    once when both operands carry one."""
    if x.encoder.scale > 1 and y.encoder.scale > 1:
        result.encoder = x.encoder
        return result.div_(x.encoder.scale)
    result.encoder = x.encoder if x.encoder.scale > 1 else y.encoder
    return result


# ------------------------------------------------------------------------------------------------- protocol


def fixed_product(op: str, x: ArithmeticSharedTensor, w: FixedShare, *, weight_left: bool = False
                  ) -> ArithmeticSharedTensor:
    """Shares of ``op(x, W)`` (or ``op(W, x)`` with ``weight_left``) at the product of both scales, as CrypTen's
    Beaver protocol returns them: open ``E = x - A``; party i keeps ``op(E, G_i) + op(A_i, F) + C_i``."""
    a, c = _provider_tuple(op, w, tuple(x.size()), weight_left=weight_left)
    e = crypten.communicator.get().all_reduce(x.share - a)  # one round: the activation's size
    COUNTERS["products"] += 1
    COUNTERS["product_values"] += e.numel()
    if weight_left:
        z = _product(op, w.share, e) + _product(op, w.public, a) + c
    else:
        z = _product(op, e, w.share) + _product(op, a, w.public) + c
    return ArithmeticSharedTensor.from_shares(z, precision=0)


def _provider_tuple(op: str, w: FixedShare, fresh_size: tuple[int, ...], *, weight_left: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """This party's shares of a fresh ``A`` (``fresh_size``) and of ``C = op(A, view(B))`` (or ``op(view(B), A)``)."""
    rank = crypten.communicator.get().get_rank()
    out_size = _result_size(op, w.size(), fresh_size) if weight_left else _result_size(op, fresh_size, w.size())
    if crypten.mpc.ttp_required():
        gen = TTPClient.get().get_generator()
        a = generate_random_ring_element(fresh_size, generator=gen)
        if rank == 0:
            c = TTPClient.get().ttp_request("fixed_triple", None, w.key, w.views, op, list(fresh_size), weight_left)
        else:
            c = generate_random_ring_element(out_size, generator=gen)
        return a, c
    # tfp: rank 0 deals (shares from a source cost no communication: pseudo-random zero sharings)
    if rank == 0:
        a_plain = generate_random_ring_element(fresh_size)
        b = apply_view(_TFP_MASKS[w.key], w.views)
        c_plain = _product(op, b, a_plain) if weight_left else _product(op, a_plain, b)
    else:
        a_plain, c_plain = torch.zeros(fresh_size, dtype=torch.long), torch.zeros(out_size, dtype=torch.long)
    a = ArithmeticSharedTensor(a_plain, precision=0, src=0).share
    c = ArithmeticSharedTensor(c_plain, precision=0, src=0).share
    return a, c


def fix_weight(tensor: Any) -> int:
    """Setup for one secret weight (an ``MPCTensor``, in place): deal a fresh mask ``B``, open ``F = W - B``, keep
    ``G_i``. Every party calls this for the same weights in the same order. Returns the mask's key."""
    shares = tensor._tensor
    if isinstance(shares, FixedShare):
        raise MpcgenError("this weight was already fixed in this session")
    key = next(_KEYS)
    size = tuple(shares.size())
    rank = crypten.communicator.get().get_rank()
    if crypten.mpc.ttp_required():
        b = generate_random_ring_element(size, generator=TTPClient.get().get_generator())
        if rank == 0:
            TTPClient.get().ttp_request("fixed_setup", None, key, list(size))
    else:
        plain = generate_random_ring_element(size) if rank == 0 else torch.zeros(size, dtype=torch.long)
        if rank == 0:
            _TFP_MASKS[key] = plain
        b = ArithmeticSharedTensor(plain, precision=0, src=0).share
    f = crypten.communicator.get().all_reduce(shares.share - b)  # F = W - B, opened to both parties
    COUNTERS["setups"] += 1
    COUNTERS["setup_values"] += f.numel()
    g = f + b if rank == 0 else b
    tensor._tensor = FixedShare.create(g, f, key, shares.encoder)
    return key


def end_session() -> None:
    """Forget this process's tfp masks (the dealer's die with its process)."""
    _TFP_MASKS.clear()


# ----------------------------------------------------------------------------------------------- dispatching


def _dispatch(op: str, original: Any) -> Any:
    def product(x: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(y, FixedShare) and _fresh(x) and not args and not kwargs:
            return fixed_product(op, x, y)
        return original(x, y, *args, **kwargs)

    product.__wrapped__ = original
    return product


def _install() -> None:
    """Route CrypTen's private products with a fixed weight on the right through :func:`fixed_product` (the left
    case is :meth:`FixedShare._arithmetic_function`), and teach the TTP server the two requests it serves."""
    for op in OPS:
        if not hasattr(getattr(beaver, op), "__wrapped__"):
            setattr(beaver, op, _dispatch(op, getattr(beaver, op)))
    TTPServer.fixed_setup = _serve_fixed_setup
    TTPServer.fixed_triple = _serve_fixed_triple


def _serve_fixed_setup(self: TTPServer, key: int, size: tuple[int, ...]) -> torch.Tensor:
    """Dealer: draw ``B`` as the sum of the parties' seeded shares and keep it for this session."""
    masks = self.__dict__.setdefault("fixed_masks", {})
    if key in masks:
        raise MpcgenError(f"fixed-weight mask {key} requested twice: a mask is never reused")
    masks[key] = self._get_additive_PRSS(size)
    return torch.zeros(1, dtype=torch.long)  # the request protocol needs a reply


def _serve_fixed_triple(self: TTPServer, key: int, views: View, op: str, fresh_size: tuple[int, ...],
                        weight_left: bool) -> torch.Tensor:
    """Dealer: a fresh ``A`` (the parties' seeded shares), ``C = op(A, view(B))``; returns rank 0's share of C."""
    a = self._get_additive_PRSS(fresh_size)
    b = apply_view(self.fixed_masks[key], views)
    c = _product(op, b, a) if weight_left else _product(op, a, b)
    return c - self._get_additive_PRSS(c.size(), remove_rank=True)


_install()

__all__ = ["COUNTERS", "FixedShare", "apply_view", "end_session", "fix_weight", "fixed_product"]
