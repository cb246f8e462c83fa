"""Slot error rate (SER) as a Hugging Face ``evaluate`` module.

A thin wrapper of :func:`mpcgen.metrics.ser.ser_details` (the rules per task are in :mod:`mpcgen.metrics.ser`). The
task is the configuration name (``e2e_nlg``, ``multiwoz_nlg``, ``web_nlg`` or an alias) or ``task=`` at compute::

    import evaluate
    from mpcgen.metrics import evaluate_module_path
    ser = evaluate.load(evaluate_module_path("ser"), config_name="e2e_nlg")
    ser.compute(predictions=["The Eagle is a pub."], slots=[[["name", "The Eagle"], ["eatType", "pub"]]])
"""

import datasets
import evaluate

from mpcgen.metrics.ser import ser_details, slot_error_rate

_DESCRIPTION = """Slot error rate: (missing + added) / checked source slots over a corpus, by deterministic string
matching of each output against its source's (slot, value) pairs (mpcgen.data's GroupedExample.slots)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one generated text per item.
    slots (list of list of [slot, value]): per item, its source's slot-value pairs.
    task (str, optional): the task, when the module was loaded without a config name.
Returns:
    ser (float): the corpus slot error rate (may exceed 1 when many values are invented).
    total (int): source slots checked; missing (int): not realised; added (int): invented values.
"""

_CITATION = """\
@inproceedings{dusek2019semantic,
  title={Semantic Noise Matters for Neural Natural Language Generation},
  author={Du{\\v{s}}ek, Ond{\\v{r}}ej and Howcroft, David M. and Rieser, Verena},
  booktitle={Proceedings of the 12th International Conference on Natural Language Generation},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Ser(evaluate.Metric):
    """Corpus slot error rate of generated texts against their source slots."""

    def _info(self) -> evaluate.MetricInfo:
        text = datasets.Value("string")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": text, "slots": datasets.Sequence(datasets.Sequence(text))}),
        )

    def _compute(self, predictions: list[str], slots: list, task: str | None = None) -> dict[str, float]:
        task = task or (self.config_name if self.config_name != "default" else None)
        if task is None:
            raise ValueError("SER needs the task: evaluate.load(..., config_name='e2e_nlg') or compute(task=...)")
        pairs = [[tuple(pair) for pair in item] for item in slots]
        details = ser_details(predictions, pairs, task)
        # The rate from the library function itself, so this module cannot drift from it.
        return {"ser": slot_error_rate(predictions, pairs, task), "total": sum(d.total for d in details),
                "missing": sum(len(d.missing) for d in details), "added": sum(len(d.added) for d in details)}
