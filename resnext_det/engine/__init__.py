"""resnext_det.engine: training. The trainer (trainer), the training plan as data (plan) and its
runner incl. the paper's two-stage schedule (plan_runner), the demo's miniature ImageNet
pretraining (pretrain), fast inference and training switches by composition (fast) and the
pre-training checks (checks). It stands beside deploy/ and imports nothing from it."""
