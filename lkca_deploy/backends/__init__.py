"""Engine backends: one module per backend behind one interface (build, load, run)."""
