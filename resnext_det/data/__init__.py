"""resnext_det.data (see module docstrings)."""
