"""Op forms: one ONNX op written as the ops an older parser reads (Gelu as Erf, Reduce axes as an attribute,
LayerNormalization decomposed; one class per module, listed in registry.py, applied by apply.py and named by
targets.Target.graph_forms), a bilinear Resize as two MatMuls that the CPU targets run faster (upsample.py,
targets.Target.upsample_matmuls), and writing a graph at an older opset (opsets.py). Nothing here is about the
large-kernel conv: that is lkca_deploy.lowering."""
