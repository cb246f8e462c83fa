"""mpcgen: private text generation with two-party secure computation."""

from mpcgen.errors import MpcgenError

__version__ = "0.1.0"

__all__ = ["MpcgenError", "__version__"]
