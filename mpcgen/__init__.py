"""mpcgen: private text generation with two-party secure computation."""

from __future__ import annotations

from typing import Any

from mpcgen.errors import MpcgenError

__version__ = "0.1.0"

# Loaded on first use, so that `import mpcgen` stays light (no torch / CrypTen until generation is asked for).
_LAZY = {"generate_private": "mpcgen.generation", "generate_plain": "mpcgen.generation",
         "TokenChooser": "mpcgen.generation",
         "PrivateGeneration": "mpcgen.generation", "GenerationStats": "mpcgen.generation"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mpcgen' has no attribute {name!r}")


__all__ = ["GenerationStats", "MpcgenError", "PrivateGeneration", "TokenChooser", "__version__", "generate_plain", "generate_private"]
