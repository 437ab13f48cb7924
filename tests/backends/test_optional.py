"""The one helper for libraries a machine may lack: a module when installed, else None or one line saying what to
install, and the backends' `available()` built on it."""

import json

import pytest

from lkca_runtime.backends.registry import backend_status
from lkca_runtime.backends.tensorrt import INSTALL_HINT as TENSORRT_HINT
from lkca_runtime.errors import UserError
from lkca_runtime.optional import installed, require


def test_an_installed_module_is_returned_and_a_missing_one_is_none():
    assert installed("json") is json
    assert installed("onnxruntime.capi.onnxruntime_pybind11_state") is not None  # a dotted name
    assert installed("no_such_library_here") is None
    assert installed("json.no_such_submodule") is None


def test_require_says_what_to_install():
    assert require("json", "unused") is json
    with pytest.raises(UserError, match="^pip install no-such-library$"):
        require("no_such_library_here", "pip install no-such-library")


def test_backend_status_reads_what_is_installed():
    ok, detail = backend_status("onnxruntime")
    assert ok and detail.startswith("onnxruntime ")
    tensorrt_here = installed("tensorrt") is not None
    assert backend_status("tensorrt") == ((True, backend_status("tensorrt")[1]) if tensorrt_here else (False, TENSORRT_HINT))
