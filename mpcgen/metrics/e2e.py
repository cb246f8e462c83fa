"""BLEU and NIST as the E2E NLG Challenge reported them (mteval-v13a, case-insensitive, multi-reference).

The challenge's ``measure-scores.py`` (tuetschek/e2e-metrics) writes every system output and all of its references
to SGML files and runs NIST's ``mteval-v13a.pl`` (the ``-sig`` variant, which allows a different number of
references per segment) with its default options: no ``-c``, so text is **lower-cased**; the default
(non-international) tokeniser; BLEU's brevity penalty from the **closest** reference length; BLEU's default
smoothing. This module re-implements those definitions (it shares no code with that script):

*Tokenisation* (:func:`tokenize_mteval`): strip ``<skipped>``, join ``-\\n`` hyphenation and lines, decode
``&quot; &amp; &lt; &gt;``, lower-case ASCII ``A-Z`` only (Perl ``tr/A-Z/a-z/``: ``É`` is kept), put spaces around
every ASCII symbol in ``{|}~ [\\]^_` !"#$%& ()*+ :;<=>?@ /``, split ``.`` and ``,`` off unless they sit between
digits (``£2.50`` stays one token), split ``-`` off after a digit (``20-25`` -> ``20 - 25``), split on whitespace.
Apostrophes and other hyphens stay inside words (``family-friendly``, ``isn't``).

*BLEU* (:func:`bleu_e2e`, 0-1): over the corpus, for n = 1..4, ``m_n`` = hypothesis n-grams clipped by their
**maximum** count in any one reference of the same item, ``t_n`` = hypothesis n-grams. ``p_n = m_n / t_n``; a zero
``m_n`` becomes ``1 / (2^k t_n)`` where k counts the zero orders so far (mteval's smoothing); ``t_n = 0`` contributes
``p_n = 1``. ``BLEU = BP * exp(sum(log p_n) / 4)``, ``BP = exp(min(0, 1 - r / c))`` with c the hypothesis tokens
and r the sum over items of the reference length closest to the hypothesis length (a tie takes the shorter one).

*NIST* (:func:`nist_e2e`): information weights from **all** references of **all** items,
``info(w_1..w_n) = log2(count(w_1..w_{n-1}) / count(w_1..w_n))`` (for unigrams, the numerator is the total
number of reference words). ``NIST = BP * sum_{n=1..5} [sum of info over matched hypothesis n-grams, each
clipped by its maximum count in one reference] / t_n``. ``BP = exp(-beta * ln(c / L)^2)`` when ``c < L`` (else 1),
``beta = -ln(0.5) / ln(1.5)^2`` (BP = 0.5 at c/L = 2/3), ``L`` = total reference words / mean references per item
(= number of items x mean reference length).

How this differs from :func:`mpcgen.metrics.bleu` and :func:`mpcgen.metrics.nist`: those are case-sensitive; ``nist``
is nltk's ``corpus_nist``, which scores each hypothesis against its single best reference (clipping and length
from that one reference) instead of against all references at once.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence

logger = logging.getLogger(__name__)

_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))
_SYMBOLS = re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])")
_PERIOD_COMMA_AFTER = re.compile(r"([^0-9])([\.,])")
_PERIOD_COMMA_BEFORE = re.compile(r"([\.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

BLEU_ORDER = 4
NIST_ORDER = 5
# mteval: the NIST brevity penalty is 0.5 when the output is 2/3 as long as the references.
_NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


def tokenize_mteval(text: str, lowercase: bool = True) -> list[str]:
    """mteval-v13a's default tokenisation (see module docstring); ``lowercase`` is mteval without ``-c``."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    text = f" {text} "
    if lowercase:
        text = text.translate(_ASCII_LOWER)
    text = _SYMBOLS.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE.sub(r" \1 \2", text)
    text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    return text.split()


def _ngrams(tokens: Sequence[str], max_n: int) -> Counter:
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def _max_counts(refs: list[list[str]], max_n: int) -> Counter:
    """Per n-gram, its largest count in any one reference (multi-reference clipping)."""
    best: Counter = Counter()
    for ref in refs:
        best |= _ngrams(ref, max_n)  # Counter union keeps the maximum of the two counts
    return best


def _prepare(predictions: Sequence[str], references: Sequence[Sequence[str]]):
    from mpcgen.metrics import _check  # the shared validator lives in the package module

    refs = _check(predictions, references)
    hyps = [tokenize_mteval(p) for p in predictions]
    # An empty reference is mteval's padding for items with fewer references: it counts for nothing.
    ref_tokens = [[t for t in (tokenize_mteval(r) for r in item) if t] for item in refs]
    return hyps, ref_tokens


def _closest_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    if not ref_lens:
        return 0
    return min(ref_lens, key=lambda r: (abs(hyp_len - r), r))


def bleu_e2e(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU as the E2E challenge's mteval-v13a reported it (lower-cased, 13a tokens, smoothed), 0-1.

    Args:
        predictions: one generated text per item.
        references: per item, one or more references (counts may differ).
    """
    hyps, ref_tokens = _prepare(predictions, references)
    matches = [0] * (BLEU_ORDER + 1)
    totals = [0] * (BLEU_ORDER + 1)
    hyp_len = ref_len = 0
    for hyp, refs in zip(hyps, ref_tokens):
        best = _max_counts(refs, BLEU_ORDER)
        for gram, count in _ngrams(hyp, BLEU_ORDER).items():
            matches[len(gram)] += min(count, best.get(gram, 0))
        for n in range(1, BLEU_ORDER + 1):
            totals[n] += max(len(hyp) - n + 1, 0)
        hyp_len += len(hyp)
        ref_len += _closest_length(len(hyp), [len(r) for r in refs])
    if hyp_len == 0:
        return 0.0
    log_sum = 0.0
    smooth = 1.0
    for n in range(1, BLEU_ORDER + 1):
        if totals[n] == 0:
            continue  # mteval adds log(1) for an order with no hypothesis n-grams at all
        if matches[n] == 0:
            smooth *= 2.0
            log_sum += math.log(1.0 / (smooth * totals[n]))
        else:
            log_sum += math.log(matches[n] / totals[n])
    brevity = math.exp(min(0.0, 1.0 - ref_len / hyp_len))
    return brevity * math.exp(log_sum / BLEU_ORDER)


def nist_info(references: Sequence[Sequence[Sequence[str]]], max_n: int = NIST_ORDER) -> dict[tuple[str, ...], float]:
    """NIST information weights (bits) of every n-gram in the tokenised references of the whole corpus."""
    counts: Counter = Counter()
    words = 0
    for item in references:
        for ref in item:
            counts.update(_ngrams(ref, max_n))
            words += len(ref)
    return {
        gram: math.log2((counts[gram[:-1]] if len(gram) > 1 else words) / count) for gram, count in counts.items()
    }


def _nist_penalty(ratio: float) -> float:
    if ratio >= 1.0:
        return 1.0
    if ratio <= 0.0:
        return 0.0
    return math.exp(-_NIST_BETA * math.log(ratio) ** 2)


def nist_e2e(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = NIST_ORDER) -> float:
    """Corpus NIST as the E2E challenge's mteval-v13a reported it (lower-cased, 13a tokens, n-grams up to 5).

    Multi-reference throughout: information weights come from every reference in the corpus, each hypothesis
    n-gram is clipped by its largest count in one of its item's references, and the length penalty compares the
    output length with the mean reference length.
    """
    hyps, ref_tokens = _prepare(predictions, references)
    info = nist_info(ref_tokens, n)
    gained = [0.0] * (n + 1)
    totals = [0] * (n + 1)
    hyp_words = ref_words = ref_count = 0
    for hyp, refs in zip(hyps, ref_tokens):
        best = _max_counts(refs, n)
        for gram, count in _ngrams(hyp, n).items():
            clipped = min(count, best.get(gram, 0))
            if clipped:
                gained[len(gram)] += info[gram] * clipped
        for k in range(1, n + 1):
            totals[k] += max(len(hyp) - k + 1, 0)
        hyp_words += len(hyp)
        ref_words += sum(len(r) for r in refs)
        ref_count += len(refs)
    if ref_words == 0:
        logger.warning("NIST undefined (every reference is empty); reporting 0.0")
        return 0.0
    mean_refs = ref_count / len(hyps)
    score = sum(gained[k] / max(totals[k], 1) for k in range(1, n + 1))
    return score * _nist_penalty(hyp_words / (ref_words / mean_refs))


__all__ = ["BLEU_ORDER", "NIST_ORDER", "bleu_e2e", "nist_e2e", "nist_info", "tokenize_mteval"]
