"""Op forms: one ONNX op written as the ops an older or narrower parser reads, or runs faster (Gelu as Erf, Reduce
axes as an attribute, LayerNormalization decomposed, a bilinear Resize as two MatMuls), and writing a graph at an
older opset. One form per module, listed in forms/registry.py and applied by forms/apply.py; targets.Target names
the forms each target needs. Nothing here is about the large-kernel conv (that is lkca_deploy.lowering)."""
