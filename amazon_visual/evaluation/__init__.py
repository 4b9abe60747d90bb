"""Evaluation: ``evaluate`` (one run, one split: metrics, scikit-learn report, confusion
matrix), ``compare`` (the course project's table over several runs) and their PNG plots.

Training accuracy in the compare table is measured by evaluating the saved model on the
train split without augmentation (not read from the history, which mixes augmentation,
dropout and weights that change during the epoch). Names load on first use, so that
:mod:`.plots` can serve the training stage without importing the evaluators.
"""

import importlib

_NAMES = {
    "evaluate": "evaluator",
    "predict": "evaluator",
    "MAX_MISCLASSIFIED": "evaluator",
    "compare": "comparison",
    "format_table": "comparison",
}
__all__ = sorted(_NAMES)


def __getattr__(name):
    if name not in _NAMES:
        raise AttributeError(f"module 'amazon_visual.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"amazon_visual.evaluation.{_NAMES[name]}"), name)
    globals()[name] = value
    return value
