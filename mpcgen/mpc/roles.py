"""Names of a secure computation that every CLI and check shares: roles and ranks, providers, weight modes.

Free of CrypTen, so argument parsers (``choices``) and plaintext code can use them without loading it.
"""

from __future__ import annotations

from mpcgen.errors import MpcgenError

SERVER = 0  # holds the weights
CLIENT = 1  # holds the prompt; the only party any result is revealed to
ROLES = ("server", "client", "dealer")
# Our provider names -> CrypTen's ``cfg.mpc.provider`` values. ``ttp``: a dealer process that never sees inputs;
# ``tfp``: rank 0 makes the correlated randomness itself (insecure; benchmark parity with MERGE's runs).
PROVIDERS = {"ttp": "TTP", "tfp": "TFP"}
# ``private``: the server secret-shares its weights; ``public``: both parties hold them (SPRINT's setting).
WEIGHT_MODES = ("private", "public")
DEFAULT_TIMEOUT_S = 600.0  # a whole local run (run_parties, generate_private)
# A party link that carries nothing, not even a heartbeat, this long is dead (mpcgen.mpc.links); also the time the
# parties of a per-host run have to join.
DEFAULT_LINK_TIMEOUT_S = 60.0


def check_provider(provider: str) -> str:
    """Return ``provider`` if it names a supported provider, else raise :class:`MpcgenError`."""
    if provider not in PROVIDERS:
        raise MpcgenError(f"unknown provider {provider!r}: use one of {sorted(PROVIDERS)}")
    return provider


def check_weights_mode(weights: str) -> str:
    """Return ``weights`` if it is a known weight mode, else raise :class:`MpcgenError` listing them."""
    if weights not in WEIGHT_MODES:
        raise MpcgenError(f"unknown weights mode {weights!r}: use one of {list(WEIGHT_MODES)}")
    return weights


def role_rank(role: str, world_size: int = 2) -> int:
    """The rank a role runs as: server 0, client 1, dealer ``world_size`` (CrypTen puts the TTP last)."""
    if role not in ROLES:
        raise MpcgenError(f"unknown role {role!r}: use one of {list(ROLES)}")
    return {"server": SERVER, "client": CLIENT, "dealer": world_size}[role]


def rank_role(rank: int, world_size: int = 2) -> str:
    """The role name of ``rank`` (``party<k>`` for the extra parties of a world larger than two)."""
    if rank == world_size:
        return "dealer"
    return {SERVER: "server", CLIENT: "client"}.get(rank, f"party{rank}")


__all__ = ["CLIENT", "DEFAULT_LINK_TIMEOUT_S", "DEFAULT_TIMEOUT_S", "PROVIDERS", "ROLES", "SERVER", "WEIGHT_MODES", "check_provider",
           "check_weights_mode", "rank_role", "role_rank"]
