"""Backends by name, build side: the only place that knows which toolkit module builds each backend's engines
(each extends the device-side loader of lkca_runtime.backends with `build`)."""

from __future__ import annotations

from lkca_deploy.backends.base import Backend
from lkca_runtime.backends.registry import BACKENDS, instantiate

_CLASSES = {
    "onnxruntime": ("lkca_deploy.backends.onnxruntime", "OnnxRuntimeBackend"),
    "openvino": ("lkca_deploy.backends.openvino", "OpenVinoBackend"),
    "tensorrt": ("lkca_deploy.backends.tensorrt", "TensorRTBackend"),
}


def get_backend(name: str, *, require_available: bool = True) -> Backend:
    """The backend called `name`; UserError for an unknown name, or (by default) for one not installed here."""
    return instantiate(_CLASSES, name, require_available)


def available_backends() -> dict[str, tuple[bool, str]]:
    """name -> (usable here, version and devices or the install hint)."""
    return {name: get_backend(name, require_available=False).available() for name in BACKENDS}
