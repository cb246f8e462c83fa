"""Secure two-party computation runtime (CrypTen): compatibility shim, party launch, providers, cost meter.

Names are loaded on first use, so that ``import mpcgen.mpc.costs`` (the cost model, which plaintext code and
reports use) does not import CrypTen.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "WEIGHT_MODES": "mpcgen.mpc.encrypt", "encrypt_input": "mpcgen.mpc.encrypt", "encrypt_model": "mpcgen.mpc.encrypt",
    "CLIENT": "mpcgen.mpc.launch", "PROVIDERS": "mpcgen.mpc.launch", "SERVER": "mpcgen.mpc.launch",
    "init_party": "mpcgen.mpc.launch", "run_parties": "mpcgen.mpc.launch", "serve_dealer": "mpcgen.mpc.launch",
    "shutdown_party": "mpcgen.mpc.launch",
    "CostMeter": "mpcgen.mpc.meter",
    "NETWORKS": "mpcgen.mpc.costs", "Cost": "mpcgen.mpc.costs", "CostReport": "mpcgen.mpc.costs",
    "PartyCost": "mpcgen.mpc.costs", "project_time": "mpcgen.mpc.costs",
    "ForwardResult": "mpcgen.mpc.runtime", "forward_party": "mpcgen.mpc.runtime", "private_forward": "mpcgen.mpc.runtime",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mpcgen.mpc' has no attribute {name!r}")


__all__ = sorted(_LAZY)
