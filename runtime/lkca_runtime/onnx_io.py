"""The only ONNX reader: load safely (a UserError for a bad file, external data kept inside the model's folder),
save atomically, and the facts every stage reads off a graph: its real inputs, its static shapes, its constants.

The loader checks every external-data location *before* reading any of it, so a crafted model cannot make
us open files outside its own directory ("../../etc/passwd", absolute paths, symlinks that lead out).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper

from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_output


def load_onnx(path: str | os.PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """The validated model at `path`, or a UserError saying what is wrong with the file and how to fix it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"ONNX file not found: {path}; check the path or export the model first")
    if not path.is_file():
        raise UserError(f"{path} is not a file; give the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as err:
        raise UserError(
            f"{path} is not a readable ONNX model (not ONNX, or truncated: {type(err).__name__}); "
            "re-export it"
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise UserError(f"{path} is not an ONNX model (empty or no graph); re-export it")
    check_external_data_locations(model, path.parent)
    if load_external_data:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as err:
            raise UserError(f"cannot read the external data of {path}: {_first_line(err)}") from None
    try:
        # Data left outside is checked from the file, where the checker finds it beside the model (from the
        # ModelProto alone it looks in the working directory and calls a valid model invalid).
        unloaded = not load_external_data and external_data_locations(model)
        onnx.checker.check_model(str(path) if unloaded else model)
    except onnx.checker.ValidationError as err:
        raise UserError(f"{path} is not a valid ONNX model: {_first_line(err)}") from None
    return model


def save_onnx_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write `model` (all tensors inline) to a temp file beside `path`, then rename it into place."""
    path = Path(path)
    with atomic_output(path) as tmp:
        onnx.save_model(model, str(tmp))
    return path


def check_external_data_locations(model: onnx.ModelProto, model_dir: Path) -> None:
    """Refuse external-data locations that are absolute or resolve outside `model_dir` (path traversal)."""
    base = Path(model_dir).resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        # Backslashes count as separators too: a model written on Windows must not smuggle "..\" past us.
        parts = PurePosixPath(location.replace("\\", "/"))
        escapes = (
            not location
            or parts.is_absolute()
            or ".." in parts.parts
            or (len(location) > 1 and location[1] == ":")  # a Windows drive letter
            or not (base / location).resolve().is_relative_to(base)  # e.g. a symlink that leads out
        )
        if escapes:
            raise UserError(
                f"tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder {base}; "
                "refusing to read it (re-export the model with its data beside it)"
            )


# ---------------------------------------------------------------- graph facts


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...]  # None for a symbolic or unknown dimension
    dtype: str  # numpy dtype name
    symbols: tuple[str, ...] = ()  # names of the symbolic dimensions ("batch"), for messages

    @property
    def static(self) -> bool:
        return None not in self.shape

    def as_dict(self) -> dict:
        """The input as sidecars and reports record it."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real graph inputs: initializers that old exporters also list as inputs are skipped."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)
        symbols = tuple(d.dim_param or "?" for d in dims if not (d.HasField("dim_value") and d.dim_value > 0))
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        specs.append(InputSpec(value.name, shape, dtype, symbols))
    return specs


def input_spec(model: onnx.ModelProto) -> InputSpec:
    """The model's one real input (the models of this toolkit have exactly one)."""
    specs = graph_inputs(model)
    if not specs:
        raise UserError("the ONNX model has no input: re-export it")
    return specs[0]


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Tensor name -> shape from ONNX shape inference (None for a dynamic or unknown dimension)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        inferred = model  # best effort: shapes stay unknown, so passes that need them skip with a reason
    shapes = {}
    graph = inferred.graph
    for value in chain(graph.input, graph.value_info, graph.output):
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tensor_type.shape.dim
            )
    return shapes


def constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Name -> TensorProto for initializers that a caller cannot override and Constant node outputs."""
    overridable = {value.name for value in graph.input}
    tensors = {t.name: t for t in graph.initializer if t.name not in overridable}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                tensors[node.output[0]] = value
    return tensors


def external_data_locations(model: onnx.ModelProto) -> list[str]:
    """The files (relative to the model's folder) whose bytes the model reads beside its own, in first-use order.
    Meaningful on a model loaded with load_external_data=False (loading moves the data inline)."""
    found = (next((e.value for e in t.external_data if e.key == "location"), "") for t in _all_tensors(model)
             if t.data_location == onnx.TensorProto.EXTERNAL)
    return list(dict.fromkeys(found))


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _attribute_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for sub in attr.graphs:
            yield from _graph_tensors(sub)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
