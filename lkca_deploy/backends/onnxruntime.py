"""ONNX Runtime backend, build side: the artifact is the ONNX itself (precision already baked in) plus its sidecar.
Loading and running are the device runtime's (lkca_runtime.backends.onnxruntime).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lkca_deploy.backends.base import BackendBase
from lkca_runtime.backends.base import (
    check_options,
    check_precision,
    input_facts,
    require_onnx_precision,
    write_sidecar,
)
from lkca_runtime.backends.onnxruntime import (
    NAME,
    OnnxRuntimeLoader,
    _ort,
    _session,
    check_optimization,
    providers_for,
)
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_output
from lkca_runtime.onnx_io import external_data_locations, load_onnx


class OnnxRuntimeBackend(OnnxRuntimeLoader, BackendBase):
    int8_flavors = ("cpu", "tensorrt")  # "tensorrt" shows on CPU what a TensorRT INT8 engine will compute
    def build(
        self,
        onnx_path: Path,
        out: Path,
        *,
        precision: str,
        calib: np.ndarray | None = None,
        device: str | None = None,
        provenance: dict[str, Any] | None = None,
        **options: Any,
    ) -> Path:
        """Copy the ONNX to `out` (unless it is already there), check that it opens, write the sidecar.

        `calib` is unused: an INT8 ONNX for onnxruntime already holds its Q/DQ nodes.
        """
        check_options(options, BUILD_OPTIONS, "onnxruntime build")
        check_precision(precision, self.precisions, NAME)
        device = device or "cpu"
        optimization = check_optimization(options.get("optimization", "all"))
        providers = providers_for(device, _ort().get_available_providers())
        onnx_path, out = Path(onnx_path), Path(out)
        model = load_onnx(onnx_path)
        require_onnx_precision(model, onnx_path, precision, (precision,))
        external = _external_data(onnx_path)
        if external or onnx_path.resolve() != out.resolve():
            # The artifact is one file: external data (read from onnx_path's folder) is written inline, so the
            # artifact runs wherever it is copied and its sidecar's hash covers every byte the session reads.
            with atomic_output(out, size_hint=model.ByteSize()) as tmp:
                if external:
                    _save_inline(model, tmp, onnx_path)
                else:
                    tmp.write_bytes(onnx_path.read_bytes())
                _session(tmp, providers, optimization=optimization)  # a model that cannot open is no artifact
        else:
            _session(out, providers, optimization=optimization)
        write_sidecar(
            out,
            backend=NAME,
            precision=precision,
            source_onnx=onnx_path,
            library_version=_ort().__version__,
            device=device,
            options={"optimization": optimization},
            provenance=provenance,
            input=input_facts(model),
        )
        return out


BUILD_OPTIONS = ("optimization",)


def _external_data(path: Path) -> list[str]:
    return external_data_locations(load_onnx(path, load_external_data=False))


def _save_inline(model, tmp: Path, source: Path) -> None:
    import onnx

    if model.ByteSize() >= 2**31:  # protobuf's limit for one file
        raise UserError(f"{source} holds {model.ByteSize() / 2**30:.1f} GiB of weights in external data: an "
                        "onnxruntime artifact is one file, which protobuf caps at 2 GiB")
    onnx.save_model(model, str(tmp))
