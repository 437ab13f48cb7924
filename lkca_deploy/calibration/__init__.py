"""Calibration: the samples, their ranges, and the precision they bake into the ONNX.

`sources` turns a data set name, an image folder or a `.npy`/`.npz` file into preprocessed calibration tensors;
`quantize` writes FP16 casts and INT8 Q/DQ (flavours `cpu` and `tensorrt`) into the ONNX, checks a QDQ model
against a flavour's rules, and reads and writes TensorRT calibration caches. Which parts stay float is decided in
lkca_deploy.precision.
"""

# The defaults every entry point shares (CLI options, pipeline, Python API); here because this module imports
# nothing, so the CLI reads them without loading onnx.
CALIB_SAMPLES = 512  # >= 500 images for a ViT's INT8 ranges (docs/reduced-precision.md); sources warn below 300
DEFAULT_METHOD = "minmax"  # calibration range method (quantize.Method)
