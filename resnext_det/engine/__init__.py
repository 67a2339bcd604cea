"""resnext_det.engine (see module docstrings)."""
