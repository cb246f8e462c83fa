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

Installation. Importing this module changes nothing in CrypTen. A party process calls :func:`install` (done by
:func:`mpcgen.mpc.launch.init_party` after ``crypten.init()``): it creates the process's :class:`FixedSession`,
which owns the mask keys, the counters and the ``tfp`` masks, and routes CrypTen's ``beaver.mul`` /
``beaver.matmul`` through it. :func:`uninstall` (done by :func:`mpcgen.mpc.launch.shutdown_party`) puts CrypTen's
functions back and ends the session. The dealer runs :class:`FixedTTPServer`, a ``TTPServer`` subclass that also
serves the two fixed-weight requests and keeps the masks ``B`` in its own instance.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Sequence

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
# What a session counts: weights set up, fixed-operand products, and the values opened for each.
COUNTER_NAMES = ("setups", "products", "setup_values", "product_values")


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
    linear ops applied since setup, ``session`` the :class:`FixedSession` that set it up (its key means nothing to
    another session's provider). Products with an ordinary secret tensor take the fixed-operand protocol.
    """

    key: int
    public: torch.Tensor
    views: View
    session: "FixedSession"

    @classmethod
    def create(cls, share: torch.Tensor, public: torch.Tensor, key: int, encoder: Any, session: "FixedSession",
               views: View = ()) -> "FixedShare":
        out = cls(src=crypten.mpc.primitives.arithmetic.SENTINEL)
        out.share, out.public, out.key, out.views, out.encoder = share, public, key, tuple(views), encoder
        out.session = session
        return out

    def _view(self, name: str, args: tuple, apply: Any) -> "FixedShare":
        return FixedShare.create(apply(self.share), apply(self.public), self.key, self.encoder, self.session,
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
            result = self.session.product(op, y, self, weight_left=True)
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


class FixedSession:
    """The fixed-weight state of one party process for one session (one launch of the parties).

    Attributes:
        counters: what this party ran in the session: ``setups`` (weights fixed), ``products`` (fixed-operand
            products), ``setup_values`` / ``product_values`` (ring elements opened by each), for tests and logs.
        tfp_masks: ``tfp`` only, rank 0: the plaintext masks ``B`` by key (with ``ttp`` the dealer keeps them).

    Both parties fix the same weights in the same order, so the keys drawn here agree across parties. Create one
    with :func:`install`; it is current until :func:`uninstall`.
    """

    def __init__(self) -> None:
        self._keys = itertools.count()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.tfp_masks: dict[int, torch.Tensor] = {}
        self._originals: dict[str, Callable[..., Any]] = {}  # CrypTen's beaver functions while installed

    @property
    def active(self) -> bool:
        """Whether this is the installed session (products and setups need it)."""
        return _CURRENT is self

    def _check_active(self) -> None:
        if not self.active:
            raise MpcgenError("this fixed-weight session has ended (or was never installed): weights are fixed "
                              "and multiplied within one session, between init_party() and shutdown_party()")

    def fix_weight(self, tensor: Any) -> int:
        """Setup for one secret weight (an ``MPCTensor``, in place): deal a fresh mask ``B``, open ``F = W - B``,
        keep ``G_i``. Every party calls this for the same weights in the same order. Returns the mask's key."""
        self._check_active()
        shares = tensor._tensor
        if isinstance(shares, FixedShare):
            raise MpcgenError("this weight was already fixed in this session")
        key = next(self._keys)
        size = tuple(shares.size())
        rank = crypten.communicator.get().get_rank()
        if crypten.mpc.ttp_required():
            b = generate_random_ring_element(size, generator=TTPClient.get().get_generator())
            if rank == 0:
                TTPClient.get().ttp_request("fixed_setup", None, key, list(size))
        else:
            plain = generate_random_ring_element(size) if rank == 0 else torch.zeros(size, dtype=torch.long)
            if rank == 0:
                self.tfp_masks[key] = plain
            b = ArithmeticSharedTensor(plain, precision=0, src=0).share
        f = crypten.communicator.get().all_reduce(shares.share - b)  # F = W - B, opened to both parties
        self.counters["setups"] += 1
        self.counters["setup_values"] += f.numel()
        g = f + b if rank == 0 else b
        tensor._tensor = FixedShare.create(g, f, key, shares.encoder, self)
        return key

    def product(self, op: str, x: ArithmeticSharedTensor, w: FixedShare, *, weight_left: bool = False
                ) -> ArithmeticSharedTensor:
        """Shares of ``op(x, W)`` (or ``op(W, x)`` with ``weight_left``) at the product of both scales, as
        CrypTen's Beaver protocol returns them: open ``E = x - A``; party i keeps ``op(E, G_i) + op(A_i, F) + C_i``."""
        self._check_active()
        if w.session is not self:
            raise MpcgenError("this weight was fixed in another session: its mask is unknown to this one")
        a, c = self._provider_tuple(op, w, tuple(x.size()), weight_left=weight_left)
        e = crypten.communicator.get().all_reduce(x.share - a)  # one round: the activation's size
        self.counters["products"] += 1
        self.counters["product_values"] += e.numel()
        if weight_left:
            z = _product(op, w.share, e) + _product(op, w.public, a) + c
        else:
            z = _product(op, e, w.share) + _product(op, a, w.public) + c
        return ArithmeticSharedTensor.from_shares(z, precision=0)

    def _provider_tuple(self, op: str, w: FixedShare, fresh_size: tuple[int, ...], *, weight_left: bool
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """This party's shares of a fresh ``A`` (``fresh_size``) and of ``C = op(A, view(B))`` (or
        ``op(view(B), A)``)."""
        rank = crypten.communicator.get().get_rank()
        out_size = _result_size(op, w.size(), fresh_size) if weight_left else _result_size(op, fresh_size, w.size())
        if crypten.mpc.ttp_required():
            gen = TTPClient.get().get_generator()
            a = generate_random_ring_element(fresh_size, generator=gen)
            if rank == 0:
                c = TTPClient.get().ttp_request("fixed_triple", None, w.key, w.views, op, list(fresh_size),
                                                weight_left)
            else:
                c = generate_random_ring_element(out_size, generator=gen)
            return a, c
        # tfp: rank 0 deals (shares from a source cost no communication: pseudo-random zero sharings)
        if rank == 0:
            a_plain = generate_random_ring_element(fresh_size)
            b = apply_view(self.tfp_masks[w.key], w.views)
            c_plain = _product(op, b, a_plain) if weight_left else _product(op, a_plain, b)
        else:
            a_plain, c_plain = torch.zeros(fresh_size, dtype=torch.long), torch.zeros(out_size, dtype=torch.long)
        a = ArithmeticSharedTensor(a_plain, precision=0, src=0).share
        c = ArithmeticSharedTensor(c_plain, precision=0, src=0).share
        return a, c


def fix_weight(tensor: Any) -> int:
    """:meth:`FixedSession.fix_weight` in the installed session (raises :class:`MpcgenError` if there is none)."""
    return session().fix_weight(tensor)


def fixed_product(op: str, x: ArithmeticSharedTensor, w: FixedShare, *, weight_left: bool = False
                  ) -> ArithmeticSharedTensor:
    """:meth:`FixedSession.product` in the session that fixed ``w`` (which must still be installed)."""
    return w.session.product(op, x, w, weight_left=weight_left)


# ------------------------------------------------------------------------------------- installing a session

_CURRENT: FixedSession | None = None  # the installed session of this process, if any


def session() -> FixedSession:
    """The installed session of this process; :class:`MpcgenError` if :func:`install` was not called."""
    if _CURRENT is None:
        raise MpcgenError("no fixed-weight session in this process: parties install one in init_party() "
                          "(mpcgen.mpc.fixed.install())")
    return _CURRENT


def installed() -> bool:
    """Whether a session is installed in this process."""
    return _CURRENT is not None


def install() -> FixedSession:
    """Start this process's fixed-weight session, or return the one already installed (idempotent).

    Routes CrypTen's private products with a fixed weight on the right (``beaver.mul`` / ``beaver.matmul``)
    through the session; the weight-on-the-left case is :meth:`FixedShare._arithmetic_function`. Nothing else of
    CrypTen's is changed. Undone by :func:`uninstall`.
    """
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    new = FixedSession()
    for op in OPS:
        original = getattr(beaver, op)
        new._originals[op] = original
        setattr(beaver, op, _dispatch(op, original, new))
    _CURRENT = new
    return new


def uninstall() -> FixedSession | None:
    """End this process's session: put CrypTen's ``beaver`` functions back and forget the session's ``tfp``
    masks. Returns the session that ended (its counters stay readable), ``None`` if none was installed."""
    global _CURRENT
    ended, _CURRENT = _CURRENT, None
    if ended is None:
        return None
    for op, original in ended._originals.items():
        current = getattr(beaver, op)
        if getattr(current, "_fixed_session", None) is ended:
            setattr(beaver, op, original)
        else:  # someone wrapped ours since: removing it would drop their wrapper too
            logger.warning("crypten beaver.%s was replaced after the fixed-weight install; left as it is", op)
    ended._originals.clear()
    ended.tfp_masks.clear()
    return ended


def _dispatch(op: str, original: Callable[..., Any], owner: FixedSession) -> Callable[..., Any]:
    def product(x: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(y, FixedShare) and _fresh(x) and not args and not kwargs:
            return fixed_product(op, x, y)
        return original(x, y, *args, **kwargs)

    product.__wrapped__ = original  # type: ignore[attr-defined]
    product._fixed_session = owner  # type: ignore[attr-defined]
    product.__name__ = product.__qualname__ = f"fixed_{op}"
    return product


# ------------------------------------------------------------------------------------------------- dealer


class FixedTTPServer(TTPServer):
    """CrypTen's TTP server that also serves the fixed-weight requests ``fixed_setup`` and ``fixed_triple``.

    CrypTen's ``TTPServer`` serves in its constructor: it answers each ``TTPClient.ttp_request(name, ...)`` of
    rank 0 with ``getattr(self, name)(...)`` until rank 0 shuts down, so the two methods below are found on this
    subclass. The session's masks ``B`` live in :attr:`fixed_masks` of this instance and die with it.
    """

    def __init__(self) -> None:
        self.fixed_masks: dict[int, torch.Tensor] = {}
        super().__init__()  # the serving loop

    def fixed_setup(self, key: int, size: tuple[int, ...]) -> torch.Tensor:
        """Draw ``B`` as the sum of the parties' seeded shares and keep it for this session."""
        if key in self.fixed_masks:
            raise MpcgenError(f"fixed-weight mask {key} requested twice: a mask is never reused")
        self.fixed_masks[key] = self._get_additive_PRSS(size)
        return torch.zeros(1, dtype=torch.long)  # the request protocol needs a reply

    def fixed_triple(self, key: int, views: View, op: str, fresh_size: tuple[int, ...], weight_left: bool
                     ) -> torch.Tensor:
        """A fresh ``A`` (the parties' seeded shares), ``C = op(A, view(B))``; returns rank 0's share of C."""
        a = self._get_additive_PRSS(fresh_size)
        b = apply_view(self.fixed_masks[key], views)
        c = _product(op, b, a) if weight_left else _product(op, a, b)
        return c - self._get_additive_PRSS(c.size(), remove_rank=True)


__all__ = ["FixedSession", "FixedShare", "FixedTTPServer", "apply_view", "fix_weight", "fixed_product", "install",
           "installed", "session", "uninstall"]
