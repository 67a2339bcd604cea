"""The application layer: command-line programs built on :mod:`resnext_det.engine` and
:mod:`resnext_det.deploy` (measurement scripts and the like), each behind a tools/ script."""
