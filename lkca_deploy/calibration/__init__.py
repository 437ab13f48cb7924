"""Calibration samples and precision baked into the ONNX.

`sources` turns a data set name, an image folder or a `.npy`/`.npz` file into preprocessed calibration tensors;
`quantize` writes FP16 casts and INT8 Q/DQ (flavours `cpu` and `tensorrt`) into the ONNX, checks a QDQ model
against a flavour's rules, and reads and writes TensorRT calibration caches.
"""
