"""The one place that imports CrypTen.

CrypTen 0.4.1 (its last release) targets torch 1.x. On torch 2.x ``import crypten`` fails in
``crypten/nn/onnx_converter.py``, which imports ``torch.onnx._internal.registration`` (removed from torch). We only
need CrypTen's MPC tensors, not its ONNX model converter, so an empty stand-in module of that name is registered
before the import. Every module of ours gets crypten from here::

    from mpcgen.mpc.compat import crypten
"""

from __future__ import annotations

import sys
import types

import torch.onnx

_SHIM_NAME = "torch.onnx._internal.registration"


def _install_onnx_shim() -> None:
    try:
        __import__(_SHIM_NAME)
        return
    except ImportError:
        pass
    stub = types.ModuleType(_SHIM_NAME)
    stub.__doc__ = "mpcgen stand-in: CrypTen's ONNX converter imports this module but mpcgen never converts ONNX."
    stub.registry = None  # the one name crypten imports from it; only used by ONNX conversion
    sys.modules[_SHIM_NAME] = stub


_install_onnx_shim()

import crypten  # noqa: E402  (must follow the shim)
import crypten.communicator  # noqa: E402,F401
import crypten.mpc  # noqa: E402,F401

__all__ = ["crypten"]
