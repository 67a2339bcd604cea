"""Applications on top of engine/ and deploy/: whole workflows that use the package's parts
together (the scale tool: :mod:`resnext_det.apps.scale`)."""
