"""Load the same tasks from the Hugging Face Hub, for users who have network access and ``datasets``.

Not exercised by the test-suite (no Hub here); the offline loaders in :mod:`mpcgen.data` are the reference.
Sources go through the same linearisation functions as the offline readers, so prompts match.

Hub datasets used (name, config, split names):

* ``e2e_nlg``: ``tuetschek/e2e_nlg`` (fields ``meaning_representation``, ``human_reference``); splits
  train/validation/test.
* ``web_nlg``: ``webnlg-challenge/web_nlg``, config ``release_v3.0_en``; splits train/dev/test (our
  ``validation`` maps to ``dev``); fields ``modified_triple_sets.mtriple_set`` and ``lex.text``.
* ``multiwoz_nlg``: ``pfb30/multi_woz_v22`` (MultiWOZ **2.2**, raw wording, not the ConvLab-tokenised 2.1 staged
  here, so figures are not comparable with the offline copy); system turns with their ``dialogue_acts``.
"""

from __future__ import annotations

from typing import Any

from mpcgen.data.e2e import normalise_ws
from mpcgen.data.multiwoz import linearise_acts
from mpcgen.data.webnlg import linearise_triples
from mpcgen.errors import MpcgenError

# task -> (hub path, config, {our split: hub split})
HUB_NAMES: dict[str, tuple[str, str | None, dict[str, str]]] = {
    "e2e_nlg": ("tuetschek/e2e_nlg", None, {"train": "train", "validation": "validation", "test": "test"}),
    "web_nlg": ("webnlg-challenge/web_nlg", "release_v3.0_en", {"train": "train", "validation": "dev", "test": "test"}),
    "multiwoz_nlg": ("pfb30/multi_woz_v22", None, {"train": "train", "validation": "validation", "test": "test"}),
}


def _e2e(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(normalise_ws(record["meaning_representation"]), normalise_ws(record["human_reference"]))]


def _webnlg(record: dict[str, Any]) -> list[tuple[str, str]]:
    triples = record["modified_triple_sets"]["mtriple_set"][0]
    source, _ = linearise_triples(list(triples), where=f"web_nlg eid={record.get('eid')}")
    return [(source, normalise_ws(text)) for text in record["lex"]["text"]]


def _multiwoz(record: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = []
    turns = record["turns"]
    for speaker, utterance, acts in zip(turns["speaker"], turns["utterance"], turns["dialogue_acts"]):
        if speaker != 1:  # 0 = user, 1 = system
            continue
        dialog_act = acts["dialog_act"]
        flat: list[tuple[str, str, str]] = []
        for intent, act_slots in zip(dialog_act["act_type"], dialog_act["act_slots"]):
            for slot, value in zip(act_slots["slot_name"], act_slots["slot_value"]):
                flat.append((intent, slot, value))
        if flat:  # turns without acts are dropped, as in the offline copy
            pairs.append((linearise_acts(flat)[0], normalise_ws(utterance)))
    return pairs


_CONVERTERS = {"e2e_nlg": _e2e, "web_nlg": _webnlg, "multiwoz_nlg": _multiwoz}


def load_hub(task: str, split: str) -> list[tuple[str, str]]:
    """Download/load ``task``'s ``split`` with ``datasets.load_dataset``; ``(source, target)`` pairs in Hub order.

    ``task`` must already be canonical and ``split`` validated (see :func:`mpcgen.data.load_hub`).
    """
    try:
        import datasets  # lazy: an optional dependency
    except ImportError:
        raise MpcgenError(
            "loading from the Hugging Face Hub needs the 'datasets' package (pip install datasets); "
            "or use the offline copies with --data-dir"
        ) from None
    path, config, split_names = HUB_NAMES[task]
    try:
        dataset = datasets.load_dataset(path, config, split=split_names[split])
    except Exception as err:  # network, auth or a renamed dataset: all user-fixable
        raise MpcgenError(f"could not load {path} ({config or 'default'}) split {split_names[split]!r}: {err}") from err
    convert = _CONVERTERS[task]
    return [pair for record in dataset for pair in convert(record)]
