"""The libraries a machine may lack (a backend's, cuda-python, torch on a device, onnx), imported on first use.

Every such import goes through here, so a reader finds them in one place and a missing library is one line that
says what to install (a UserError), never an ImportError traceback. Libraries every install has are imported at
the top of the module that uses them.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from lkca_runtime.errors import UserError


def installed(name: str) -> ModuleType | None:
    """Module `name` (dotted names too), or None where it is not installed."""
    try:
        return import_module(name)
    except ImportError:
        return None


def require(name: str, install_hint: str) -> ModuleType:
    """Module `name`; UserError(install_hint) where it is not installed."""
    module = installed(name)
    if module is None:
        raise UserError(install_hint)
    return module
