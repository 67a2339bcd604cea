"""resnext_det.weights (see module docstrings)."""
