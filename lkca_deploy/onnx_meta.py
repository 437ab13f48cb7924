"""The toolkit's metadata in an ONNX file's metadata_props: what every later stage reads back.

Values are strings (ONNX's rule); structured ones are JSON. Keys: model, task, preprocessing, class_names,
lowering, target, toolkit_version, opset, self_check_max_abs_err, check_inputs; int8_accuracy and fp16_headroom
where the pipeline decided them; tensorrt_compatibility and fp16_fp32_nodes in the ONNX a TensorRT device builds
from.
"""

from __future__ import annotations

import json

from lkca_runtime.backends.trtexec import FP16_FP32_NODES, TENSORRT_COMPATIBILITY
from lkca_runtime.errors import UserError
from lkca_runtime.onnx_io import input_spec
from lkca_runtime.spec import PreprocessSpec

# Reduced precision decided on the FP32 export, obeyed by every build from it (backends/build.py):
INT8_ACCURACY = "int8_accuracy"  # precision/accuracy_aware.py: float units, drop per step, validation size
FP16_HEADROOM = "fp16_headroom"  # precision/headroom.py: tensors FP16 cannot hold, nodes kept FP32
JSON_KEYS = ("preprocessing", "class_names", "lowering", INT8_ACCURACY, FP16_HEADROOM, TENSORRT_COMPATIBILITY,
             FP16_FP32_NODES)


def set_metadata(model, values: dict) -> None:
    """Write (or overwrite) keys in model.metadata_props."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        text = json.dumps(value) if key in JSON_KEYS or not isinstance(value, str) else value
        if key in existing:
            existing[key].value = text
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, text


def read_metadata(model) -> dict:
    """metadata_props of a ModelProto or an ONNX file, JSON values parsed."""
    if not hasattr(model, "metadata_props"):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    out = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value) if p.key in JSON_KEYS else p.value
        except ValueError:
            out[p.key] = p.value
    return out


def spec_from_model(model) -> PreprocessSpec:
    """The model's preprocessing spec: from its metadata, or (a foreign model) guessed from its input shape."""
    meta = read_metadata(model)
    if isinstance(meta.get("preprocessing"), dict):
        try:
            return PreprocessSpec.from_dict(meta["preprocessing"])
        except (ValueError, TypeError, KeyError) as e:  # every value is checked (PreprocessSpec.__post_init__)
            raise UserError(f"the model's preprocessing metadata is not usable: {e}") from None

    dims = list(input_spec(model).shape)
    channels, h, w = (dims[1:] + [None, None, None])[:3]
    if not (channels and h and w):
        raise UserError("the model has no lkca-deploy metadata and a dynamic input size: "
                        "calibrate it with a .npy/.npz of preprocessed tensors")
    # A foreign model: pixels scaled to [0, 1] and centred, the most common convention; say so in the docs.
    return PreprocessSpec(input_size=(h, w), channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
