"""resnext_det.engine: the trainer (trainer), the training plan incl. the paper's two-stage
schedule (plan), demo pictures (demo) and the fast inference path (fast)."""
