"""resnext_det.engine: training: the trainer, the plan as data and its runner, the demo's pretraining,
the fast path and the pre-training checks (docs/ARCHITECTURE.md). It imports nothing from deploy/."""
