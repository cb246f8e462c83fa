"""Secret-share a model's weights (or not) and the client's input; reveal results, decoded exactly.

Both parties build the same architecture from the public config; only the server's copy holds the real weights.
``private`` weights: each ``nn.Parameter`` (they live on leaf op modules, see :mod:`mpcgen.models`) is replaced by a
``crypten.cryptensor(param, src=SERVER)`` attribute, so the unchanged forward runs on secret shares. Sharing from a
source costs no communication (CrypTen masks with pseudo-random zero shares). ``public`` weights: the parameters
stay plain torch tensors on both parties (SPRINT's setting), and products with them need no communication.
``private`` with ``fixed=True`` (the default) then opens each weight's mask once for the session
(:mod:`mpcgen.mpc.fixed`), so products with weights open only the activations' masks. That needs the process's
fixed-weight session, which :func:`mpcgen.mpc.launch.init_party` installs in every computing party.

Revealing goes through :func:`reveal`, not CrypTen's ``get_plain_text``: CrypTen 0.4.1's fixed-point decoder is
wrong by exactly -1.0 for some negative values (see :func:`decode` and ``docs/arithmetic.md``).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.mpc.compat import crypten
from mpcgen.mpc.fixed import session as fixed_session
from mpcgen.mpc.roles import CLIENT, SERVER, check_weights_mode

logger = logging.getLogger(__name__)


def encrypt_model(model: nn.Module, *, weights: str, src: int = SERVER, fixed: bool = True) -> nn.Module:
    """Prepare ``model`` (in place) for an encrypted forward pass; every party calls this in the same order.

    Args:
        model: the model; on ranks other than ``src`` only its architecture matters (its values are never used).
        weights: ``"private"`` (the ``src`` party secret-shares every parameter) or ``"public"`` (all parties hold
            the same plaintext weights; the input alone is secret).
        src: the rank that owns the weights.
        fixed: with ``private`` weights, run the fixed-operand setup (:meth:`mpcgen.mpc.fixed.FixedSession.fix_weight`
            of the installed session) on every weight: one opening of ``W - B`` per weight now, and products with it
            open only the activation's mask. ``False``: CrypTen's fresh Beaver triple per product (both operands'
            masks opened every time).

    Returns:
        The same module, in eval mode, without autograd. Private: parameters replaced by ``MPCTensor`` attributes.
    """
    check_weights_mode(weights)
    model.eval()
    model.requires_grad_(False)
    if weights == "public":
        return model
    rank = crypten.communicator.get().get_rank()
    session = fixed_session() if fixed else None  # before sharing anything: MpcgenError if none is installed
    n_tensors = n_values = 0
    # named_modules / named_parameters(recurse=False) iterate in registration order, the same on every party.
    for _, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            # Other parties pass zeros: only the shape of their tensor is read, and nothing of theirs may leak in.
            value = param.detach() if rank == src else torch.zeros_like(param, requires_grad=False)
            del module._parameters[name]
            shared = crypten.cryptensor(value, src=src)
            if session is not None:
                session.fix_weight(shared)
            setattr(module, name, shared)
            n_tensors += 1
            n_values += param.numel()
    logger.info("rank %d: %d weight tensors (%d values) secret-shared from rank %d%s", rank, n_tensors, n_values, src,
                " with fixed masks" if fixed else "")
    return model


def encrypt_input(tensor: torch.Tensor | None, shape: Sequence[int], *, src: int = CLIENT):
    """Secret-share ``tensor``, held by rank ``src`` only; the other parties pass ``None`` and the public ``shape``.

    Raises:
        MpcgenError: the owner passed no tensor or one of another shape, or a non-owner passed a tensor (that
            would mean it holds the owner's data).
    """
    rank = crypten.communicator.get().get_rank()
    shape = tuple(int(s) for s in shape)
    if rank == src:
        if tensor is None:
            raise MpcgenError(f"rank {rank} owns the input but passed none")
        if tuple(tensor.shape) != shape:
            raise MpcgenError(f"input has shape {tuple(tensor.shape)} but the parties agreed on {shape}")
        value = tensor.detach().float()
    else:
        if tensor is not None:
            raise MpcgenError(f"rank {rank} passed an input tensor, but only rank {src} owns the input: pass None")
        value = torch.zeros(shape)  # only the shape is read
    return crypten.cryptensor(value, src=src)


def decode(ring: torch.Tensor, scale: int) -> torch.Tensor:
    """Fixed-point ring elements (int64, ``scale`` = 2^precision) -> float32 values, ``ring / scale`` rounded once.

    Replaces ``crypten.encoder.FixedPointEncoder.decode``, which floor-divides a negative ``t`` by ``scale - 1``
    instead of ``scale`` and then adds ``(t mod scale) / scale``: for ``t = -(k * scale + r)``, ``0 <= r < scale``,
    the result is one lower than it should be whenever ``k + r > scale - 1`` (at 16 bits: a logit of -k.f is read
    as -(k+1).f with probability about k / 65,536 over its low bits). That was the rare wrong logit of ~1.0.
    """
    if scale <= 1:
        return ring.clone()  # integer encodings (precision 0): nothing to divide
    # float64 holds every |t| < 2^53 exactly and the division by a power of two is exact: one rounding, to float32.
    return (ring.double() / scale).float()


def reveal(x, dst: int | None = None) -> torch.Tensor | None:
    """The plaintext of the secret ``x`` (an ``MPCTensor``) on rank ``dst`` (on every party when ``None``);
    ``None`` on the other ranks. ``x.get_plain_text(dst)`` with an exact decoder (:func:`decode`); every party
    calls it, and only ``dst`` receives anything (the others send their shares)."""
    if x.nelement() < 1:  # as CrypTen: an empty tensor is "revealed" without communicating
        return torch.empty(x.size())
    ring = x.reveal(dst=dst)
    return None if ring is None else decode(ring, x.encoder.scale)
