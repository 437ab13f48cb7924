"""Op forms for runtimes that parse an older ONNX, one rule module each; lowering/registry.py lists them and
lowering/apply.py applies them."""
