"""resnext_det.cli (tools/train_net.py): argument handling that needs no training."""


def test_demo_followed_by_overrides_means_the_default_demo(train_net, capsys):
    """`--demo KEY VALUE` is the FPN demo with an override, not a demo named KEY."""
    rc = train_net.cli(["--dry-run", "--demo", "SOLVER.MAX_ITER", "7"])
    out = capsys.readouterr().out
    assert rc == 0 and "MAX_ITER: 7" in out, out[-2000:]
    rc = train_net.cli(["--demo", "two_stage", "--dry-run"])
    assert rc == 0 and "fast_rcnn" in capsys.readouterr().out
