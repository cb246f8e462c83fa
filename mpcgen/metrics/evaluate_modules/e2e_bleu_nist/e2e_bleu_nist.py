"""BLEU and NIST as the E2E NLG Challenge reported them, as a Hugging Face ``evaluate`` module.

A thin wrapper: the scores are :func:`mpcgen.metrics.e2e.bleu_e2e` and :func:`mpcgen.metrics.e2e.nist_e2e`
(mteval-v13a conventions: lower-cased, multi-reference; definitions in that module). Load it from this folder::

    import evaluate
    from mpcgen.metrics import evaluate_module_path
    metric = evaluate.load(evaluate_module_path("e2e_bleu_nist"))
    metric.compute(predictions=["The Eagle is a pub."], references=[["The Eagle is a pub.", "A pub: The Eagle."]])
"""

import datasets
import evaluate

from mpcgen.metrics.e2e import bleu_e2e, nist_e2e

_DESCRIPTION = """Corpus BLEU (0-1) and NIST as the E2E NLG Challenge's measure-scores.py computed them with
mteval-v13a: lower-cased, mteval tokenisation, multi-reference clipping, closest-reference brevity penalty (BLEU),
information weights from all references (NIST). Items may have different numbers of references."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one generated text per item.
    references (list of list of str, or list of str): per item, its references (a string is one reference).
Returns:
    bleu (float): corpus BLEU, 0-1.
    nist (float): corpus NIST (n-grams up to 5), unbounded (typically 0-10).
"""

_CITATION = """\
@inproceedings{novikova2017e2e,
  title={The {E2E} Dataset: New Challenges for End-to-End Generation},
  author={Novikova, Jekaterina and Du{\\v{s}}ek, Ond{\\v{r}}ej and Rieser, Verena},
  booktitle={Proceedings of the 18th Annual SIGdial Meeting on Discourse and Dialogue},
  year={2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class E2eBleuNist(evaluate.Metric):
    """E2E-convention corpus BLEU and NIST."""

    def _info(self) -> evaluate.MetricInfo:
        text = datasets.Value("string")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Several references per item, or one as a bare string (evaluate tries these in order).
            features=[
                datasets.Features({"predictions": text, "references": datasets.Sequence(text)}),
                datasets.Features({"predictions": text, "references": text}),
            ],
            reference_urls=["https://github.com/tuetschek/e2e-metrics"],
        )

    def _compute(self, predictions: list[str], references: list) -> dict[str, float]:
        refs = [[item] if isinstance(item, str) else list(item) for item in references]
        return {"bleu": bleu_e2e(predictions, refs), "nist": nist_e2e(predictions, refs)}
