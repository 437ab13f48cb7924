"""Export, lower, check and build: ONNX graph passes, target capability checks and backends."""
