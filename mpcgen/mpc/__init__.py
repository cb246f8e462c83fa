"""Secure two-party computation runtime (CrypTen): compatibility shim, party launch, providers, cost meter."""

from mpcgen.mpc.encrypt import WEIGHT_MODES, encrypt_input, encrypt_model
from mpcgen.mpc.launch import CLIENT, PROVIDERS, SERVER, init_party, run_parties, serve_dealer, shutdown_party
from mpcgen.mpc.meter import NETWORKS, CostMeter, CostReport, PartyCost, project_time
from mpcgen.mpc.runtime import ForwardResult, forward_party, private_forward

__all__ = [
    "CLIENT", "NETWORKS", "PROVIDERS", "SERVER", "WEIGHT_MODES", "CostMeter", "CostReport", "ForwardResult",
    "PartyCost", "encrypt_input", "encrypt_model", "forward_party", "init_party", "private_forward", "project_time",
    "run_parties", "serve_dealer", "shutdown_party",
]
