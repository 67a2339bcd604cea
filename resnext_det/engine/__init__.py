"""resnext_det.engine: the trainer (trainer), the training plan as data (plan) and its runner
incl. the paper's two-stage schedule (plan_runner), the demo's miniature ImageNet pretraining
(pretrain), demo pictures (demo), fast inference and training switches by composition (fast),
TorchScript export (export), the benchmark against stock detectron2 (benchmark), complexity
figures (complexity), pre-training checks (checks) and detectron2's own model, the baseline
(stock)."""
