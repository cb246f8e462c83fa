"""Offline quality metrics for data-to-text generation: BLEU, NIST, ROUGE-L, chrF++ and slot error rate.

Everything runs locally from pinned packages (sacrebleu, nltk, rouge-score); nothing is downloaded and
``evaluate.load`` is never used here. Every metric is multi-reference and accepts a different number of references
per item. Scales: ``bleu``, ``bleu_e2e``, ``rouge_l`` and ``ser`` are fractions (0-1); ``chrf`` is 0-100 as sacrebleu
reports it; ``nist`` and ``nist_e2e`` are unbounded (typically 0-10).

``bleu_e2e`` and ``nist_e2e`` (:mod:`mpcgen.metrics.e2e`) follow the E2E NLG Challenge's official script
(mteval-v13a: lower-cased, multi-reference NIST): quote those when comparing with published E2E tables. ``bleu`` and
``nist`` are the project's earlier case-sensitive figures (sacrebleu; nltk's single-best-reference NIST).

For ``evaluate`` users, SER and the E2E BLEU/NIST are also ``evaluate`` modules in local folders
(:func:`evaluate_module_path`): ``evaluate.load(evaluate_module_path("ser"), config_name="e2e")``; they call the
functions here.

Example::

    from mpcgen.data import load_grouped
    from mpcgen.metrics import corpus_scores
    test = load_grouped("e2e", "test")
    scores = corpus_scores(outputs, [g.references for g in test], slots=[g.slots for g in test], task="e2e")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from mpcgen.errors import MpcgenError
from mpcgen.metrics.e2e import bleu_e2e, nist_e2e, tokenize_mteval
from mpcgen.metrics.ser import SlotErrors, ser_details, slot_error_rate

logger = logging.getLogger(__name__)

# evaluate_modules/<name>/<name>.py: the layout evaluate.load(<folder>) expects; no __init__.py (not our modules).
EVALUATE_MODULES_DIR = Path(__file__).resolve().parent / "evaluate_modules"


def evaluate_module_path(name: str) -> str:
    """The folder of the ``evaluate`` module ``name`` (``"ser"``, ``"e2e_bleu_nist"``), for ``evaluate.load``."""
    available = sorted(p.name for p in EVALUATE_MODULES_DIR.iterdir() if (p / f"{p.name}.py").is_file())
    if name not in available:
        raise MpcgenError(f"unknown evaluate module {name!r}; choose one of {available}")
    return str(EVALUATE_MODULES_DIR / name)


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    """Validate shapes and types; return the references as lists."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise MpcgenError("predictions and references must be sequences of strings, not a single string")
    if len(predictions) == 0:
        raise MpcgenError("no predictions to score: pass at least one prediction")
    if len(predictions) != len(references):
        raise MpcgenError(
            f"got {len(predictions)} predictions but {len(references)} reference lists; pass one list per prediction"
        )
    refs = []
    for index, (prediction, item) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise MpcgenError(f"prediction {index} is {type(prediction).__name__}, expected str")
        if isinstance(item, str):
            item = [item]  # a bare string is one reference, not a sequence of characters
        item = list(item)
        if not item or not all(isinstance(r, str) for r in item):
            raise MpcgenError(f"references for item {index} must be a non-empty list of strings, got {item!r}")
        refs.append(item)
    return refs


def _streams(refs: list[list[str]]) -> list[list[str | None]]:
    """Transpose per-item reference lists into sacrebleu's reference streams, padding ragged items with None."""
    width = max(len(r) for r in refs)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(width)]


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, case-sensitive, exp smoothing), on a 0-1 scale."""
    from sacrebleu.metrics import BLEU

    refs = _check(predictions, references)
    return BLEU().corpus_score(list(predictions), _streams(refs)).score / 100.0


def chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus chrF++ (sacrebleu ``CHRF(word_order=2)``: character 6-grams plus word bigrams, beta 2), 0-100."""
    from sacrebleu.metrics import CHRF

    refs = _check(predictions, references)
    return CHRF(word_order=2).corpus_score(list(predictions), _streams(refs)).score


@lru_cache(maxsize=1)
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def nist(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 5) -> float:
    """Corpus NIST (nltk ``corpus_nist``, ``n``-grams up to 5) on sacrebleu-13a tokens, case-sensitive.

    13a tokens (punctuation split off) are what BLEU sees too, so the two are comparable; the E2E challenge's own
    script used mteval's tokeniser, which is close to 13a. Returns 0.0 when some n-gram order has no hypothesis
    n-gram at all (every prediction shorter than ``n`` tokens), where nltk would divide by zero.
    """
    from nltk.translate.nist_score import corpus_nist

    refs = _check(predictions, references)
    tok = _tokenizer_13a()
    hyps = [tok(p).split() for p in predictions]
    ref_tokens = [[tok(r).split() for r in item] for item in refs]
    try:
        return float(corpus_nist(ref_tokens, hyps, n=n))
    except ZeroDivisionError:
        logger.warning("NIST undefined (no prediction has %d tokens); reporting 0.0", n)
        return 0.0


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over items of the best ROUGE-L F-measure against any of the item's references (0-1).

    rouge-score's default tokeniser: lower-cased, non-alphanumeric characters (including accented letters) are
    separators; no stemming. Sentence-level LCS (``rougeL``), not the summary-level ``rougeLsum``.
    """
    refs = _check(predictions, references)
    scorer = _rouge_scorer()
    total = 0.0
    for prediction, item in zip(predictions, refs):
        total += max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in item)
    return total / len(refs)


def corpus_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    slots: Sequence[Sequence[tuple[str, str]]] | None = None,
    task: str | None = None,
) -> dict[str, float]:
    """Score generated texts against their references.

    Args:
        predictions: one generated text per item.
        references: per item, one or more references (counts may differ between items).
        slots: per item, the source's ``(slot, value)`` pairs (``GroupedExample.slots``); enables ``ser``.
        task: the task the slots belong to (name or alias); required with ``slots``.

    Returns:
        ``{"n", "bleu", "nist", "bleu_e2e", "nist_e2e", "rouge_l", "chrf", ["ser"]}``: ``bleu``/``bleu_e2e``/
        ``rouge_l``/``ser`` in 0-1, ``chrf`` in 0-100, ``nist``/``nist_e2e`` unbounded. ``ser`` appears only when
        ``slots`` are given and the task's registry entry has ``has_slots`` (E2E and MultiWOZ; see
        :mod:`mpcgen.metrics.ser` for why not WebNLG).
    """
    refs = _check(predictions, references)
    scores = {
        "n": len(refs),
        "bleu": bleu(predictions, refs),
        "nist": nist(predictions, refs),
        "bleu_e2e": bleu_e2e(predictions, refs),
        "nist_e2e": nist_e2e(predictions, refs),
        "rouge_l": rouge_l(predictions, refs),
        "chrf": chrf(predictions, refs),
    }
    if slots is not None:
        if task is None:
            raise MpcgenError("slots were given without task=...; name the task so slot values can be interpreted")
        from mpcgen.data import TASKS, canonical_task

        name = canonical_task(task)
        if TASKS[name].has_slots:
            scores["ser"] = slot_error_rate(predictions, slots, name)
        else:
            logger.info("no SER for %s: its slots are not checked by string matching", name)
    return scores


__all__ = [
    "SlotErrors",
    "bleu",
    "bleu_e2e",
    "chrf",
    "corpus_scores",
    "evaluate_module_path",
    "nist",
    "nist_e2e",
    "rouge_l",
    "ser_details",
    "slot_error_rate",
    "tokenize_mteval",
]
