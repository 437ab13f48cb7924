"""lkca-deploy: train, export, lower, quantize and deploy compact LKCA vision models.

Importing the package is cheap and never imports torch: the runtime Predictor runs on devices without it.
Model functions load lazily on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "create_model": ("lkca_deploy.models.zoo", "create_model"),
    "list_models": ("lkca_deploy.models.zoo", "list_models"),
    "Predictor": ("lkca_runtime.predictor", "Predictor"),
}

__all__ = ["Predictor", "__version__", "create_model", "list_models"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'lkca_deploy' has no attribute {name!r}")
