"""amazon-visual: visual product search for product catalogs.

Predict a product's category from its photo and recommend the products that look
most like a given photo or product. Heavy modules (TensorFlow, Keras) load lazily,
so ``import amazon_visual`` and ``amazon-visual --help`` stay fast.
"""
import importlib

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_LAZY = {
    "data": ("amazon_visual.data", None),
    "models": ("amazon_visual.models", None),
    "train": ("amazon_visual.training", "train"),
    "evaluate": ("amazon_visual.evaluation", "evaluate"),
    "compare": ("amazon_visual.evaluation", "compare"),
    "build_index": ("amazon_visual.index", "build_index"),
    "Recommender": ("amazon_visual.recommend", "Recommender"),
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
