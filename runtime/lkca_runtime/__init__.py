"""lkca-deploy-runtime: run and re-prove an lkca-deploy bundle on a device with numpy, PIL and one backend.

No torch, no data set: the bundle carries its engines, its preprocessing and the golden samples that prove them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The Predictor loads lazily: `import lkca_runtime` stays cheap on a small device.
    if name == "Predictor":
        from lkca_runtime.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'lkca_runtime' has no attribute {name!r}")


__all__ = ["Predictor", "__version__"]
