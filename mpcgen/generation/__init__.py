"""Private text generation: greedy decoding with the server's model and the client's prompt kept secret.

* :mod:`mpcgen.generation.loop`: the one decoding loop (``tokens`` and ``er``), run on plaintext tensors for the
  reference and on CrypTen shares under MPC.
* :mod:`mpcgen.generation.inputs`: loading a student or teacher folder, its tokenizer, and checked prompt ids.
* :mod:`mpcgen.generation.private`: the two-party session (:func:`generation_party`) and the local launcher
  (:func:`generate_private`); :func:`generate_plain` is the plaintext reference.

Command line: ``python -m mpcgen.generate`` (local processes, or one party per host with ``--role``).
"""

from mpcgen.generation.loop import DECODINGS, Hooks, check_decoding, greedy_decode
from mpcgen.generation.private import GenerationStats, PartyGeneration, PrivateGeneration, generate_plain, \
    generate_private, generation_party

__all__ = ["DECODINGS", "GenerationStats", "Hooks", "PartyGeneration", "PrivateGeneration", "check_decoding",
           "generate_plain", "generate_private", "generation_party", "greedy_decode"]
