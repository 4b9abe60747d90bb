"""Training: strategy, input pipeline, phases, callbacks, the run folder.

``train(data_dir, model, out, ...)`` writes a RUN_DIR; ``load_run(run_dir)`` returns
``(model, config, labels)``. Modules: :mod:`.trainer` (the run, in named steps),
:mod:`.phases`, :mod:`.strategy`, :mod:`.pipeline`, :mod:`.callbacks`, :mod:`.runs`.
"""

from amazon_visual.training.phases import DEFAULT_FINE_TUNE_AT, compile_model
from amazon_visual.training.phases import resolve_fine_tune_at as _resolve_fine_tune_at  # noqa: F401
from amazon_visual.training.runs import (
    HISTORY_FIELDS,
    check_same_labels,
    dataset_fingerprint,
    load_run,
    read_history,
    save_model,
)
from amazon_visual.training.strategy import STRATEGIES, mixed_precision_policy, select_strategy
from amazon_visual.training.trainer import train

__all__ = [
    "train",
    "load_run",
    "read_history",
    "save_model",
    "compile_model",
    "select_strategy",
    "mixed_precision_policy",
    "dataset_fingerprint",
    "check_same_labels",
    "STRATEGIES",
    "DEFAULT_FINE_TUNE_AT",
    "HISTORY_FIELDS",
]
