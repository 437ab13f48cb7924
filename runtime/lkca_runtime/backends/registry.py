"""Backends by name, device side: which module loads (and, for TensorRT, builds on the device) each backend's
engines. The toolkit's registry (lkca_deploy.backends.registry) adds the build side on top of these.

Backend modules import their library inside functions, so listing and checking them never fails on a machine
that lacks one.
"""

from __future__ import annotations

from importlib import import_module

from lkca_runtime.errors import UserError

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
_LOADERS = {
    "onnxruntime": ("lkca_runtime.backends.onnxruntime", "OnnxRuntimeLoader"),
    "openvino": ("lkca_runtime.backends.openvino", "OpenVinoLoader"),
    "tensorrt": ("lkca_runtime.backends.tensorrt", "TensorRTLoader"),
}


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def instantiate(table: dict, name: str, require_available: bool):
    """An instance of the class `table` names for backend `name` (module, class); UserError for an unknown name,
    or (require_available) for a backend not installed here. The toolkit's registry builds its backends so too."""
    module, cls = table[check_backend(name)]
    obj = getattr(import_module(module), cls)()
    if require_available:
        ok, reason = obj.available()
        if not ok:
            raise UserError(reason)
    return obj


def get_loader(name: str, *, require_available: bool = True):
    """The loader of backend `name`; UserError for an unknown name, or (by default) for one not installed here."""
    return instantiate(_LOADERS, name, require_available)


def backend_status(name: str) -> tuple[bool, str]:
    """(usable here, version and devices or the install hint) for backend `name`."""
    return get_loader(name, require_available=False).available()
