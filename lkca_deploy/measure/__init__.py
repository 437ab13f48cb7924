"""The toolkit's meters: the latency protocol, an engine's cost (load time, peak memory) and the Predictor's stages
timed end to end.

Reports, lowering/tune, calibration and benchmarks import them; the meters a device needs too (parity metrics,
machine facts, fingerprint) live in the runtime (lkca_runtime.metrics, .machine, .fingerprint).
"""
