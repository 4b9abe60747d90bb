"""amazon-visual: visual product search for product catalogs.

Predict a product's category from its photo and recommend the products that look
most like a given photo or product. Heavy modules (TensorFlow, Keras) load lazily,
so ``import amazon_visual`` and ``amazon-visual --help`` stay fast.

One subpackage per stage (see README, "Layout"): ``models``, ``training``, ``evaluation``,
``retrieval``, ``web``; ``data``, ``demo`` and ``cli`` beside them.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_LAZY = {
    "data": ("amazon_visual.data", None),
    "models": ("amazon_visual.models", None),
    "train": ("amazon_visual.training", "train"),
    "evaluate": ("amazon_visual.evaluation", "evaluate"),
    "compare": ("amazon_visual.evaluation", "compare"),
    "build_index": ("amazon_visual.retrieval.index", "build_index"),
    "Recommender": ("amazon_visual.retrieval.recommend", "Recommender"),
    "build_data": ("tfrecords_builder.build", "build_data"),
    "UserError": ("amazon_visual.errors", "UserError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'amazon_visual' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


# Modules that moved into the stage subpackages stay importable from their old paths
# (``from amazon_visual.report import write_report`` still works): each old name is an
# alias of the same module object, not a copy.
_MOVED = {
    "amazon_visual.pipeline": "amazon_visual.training.pipeline",
    "amazon_visual.plots": "amazon_visual.evaluation.plots",
    "amazon_visual.embeddings": "amazon_visual.retrieval.embeddings",
    "amazon_visual.index": "amazon_visual.retrieval.index",
    "amazon_visual.recommend": "amazon_visual.retrieval.recommend",
    "amazon_visual.retrieval_eval": "amazon_visual.retrieval.metrics",
    "amazon_visual.gallery": "amazon_visual.web.gallery",
    "amazon_visual.report": "amazon_visual.web.report",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())
