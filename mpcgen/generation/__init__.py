"""Private text generation: the server's model and the client's prompt kept secret, the text for the client only.

* :mod:`mpcgen.generation.loop`: the one decoding loop (``tokens``, ``er``, ``client``), run on plaintext tensors
  for the reference and for evaluation, and on CrypTen shares under MPC; also batching by prompt length.
* :mod:`mpcgen.generation.private`: the two-party session (:func:`generation_party`), the local launcher
  (:func:`generate_private`) and the plaintext reference (:func:`generate_plain`).
* :mod:`mpcgen.generation.texts`: many sources to texts in plaintext (what ``nlg.evaluate`` scores), with the
  same loop for mpcgen models and Hugging Face ``generate`` for teachers (:mod:`mpcgen.generation.hf`).
* :mod:`mpcgen.generation.inputs`, :mod:`.results`, :mod:`.sampling`: prompts, result types, the client's choice.

Command line: ``python -m mpcgen.generate`` (local processes); one party per host: ``python -m mpcgen.cli.party``.
"""

from mpcgen.generation.loop import DECODINGS, Hooks, check_decoding, decode, default_decoding, plan_batches
from mpcgen.generation.private import generate_plain, generate_private, generation_party
from mpcgen.generation.results import GenerationStats, PartyGeneration, PrivateGeneration
from mpcgen.generation.sampling import TokenChooser

__all__ = ["DECODINGS", "GenerationStats", "Hooks", "PartyGeneration", "PrivateGeneration", "TokenChooser",
           "check_decoding", "decode", "default_decoding", "generate_plain", "generate_private", "generation_party",
           "plan_batches"]
