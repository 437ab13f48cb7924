"""Backends by name: the only place that knows which module serves which backend.

Backend modules import their library inside functions, so listing and checking them never fails on a machine
that lacks one.
"""

from __future__ import annotations

from importlib import import_module

from lkca_deploy.backends.base import Backend
from lkca_deploy.errors import UserError

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
_CLASSES = {
    "onnxruntime": ("lkca_deploy.backends.onnxruntime", "OnnxRuntimeBackend"),
    "openvino": ("lkca_deploy.backends.openvino", "OpenVinoBackend"),
    "tensorrt": ("lkca_deploy.backends.tensorrt", "TensorRTBackend"),
}


def get_backend(name: str, *, require_available: bool = True) -> Backend:
    """The backend called `name`; UserError for an unknown name, or (by default) for one not installed here."""
    if name not in _CLASSES:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    module, cls = _CLASSES[name]
    backend = getattr(import_module(module), cls)()
    if require_available:
        ok, reason = backend.available()
        if not ok:
            raise UserError(reason)
    return backend


def available_backends() -> dict[str, tuple[bool, str]]:
    """name -> (usable here, version and devices or the install hint)."""
    return {name: get_backend(name, require_available=False).available() for name in BACKENDS}
