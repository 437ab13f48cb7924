"""Which parts of a model stay float, decided on the FP32 export and written into its metadata.

INT8: `accuracy_aware` quantizes every unit (`units`: patch embedding, each block's mixer and MLP, the head),
measures the task metric on a validation subset of the training split (`holdout`) and returns units to float until
it holds. FP16: `headroom` keeps FP32 the ops whose calibrated range FP16 cannot hold. `plan` runs both once for the
pipeline and writes the decision into every export. How a precision is baked in is lkca_deploy.calibration's.
"""

# Here because this module imports nothing, so the CLI reads it without loading onnx.
DEFAULT_MAX_DROP = 0.5  # points: half the INT8 parity threshold, so engines pass the report with margin
