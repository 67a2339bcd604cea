"""resnext_det.cli (tools/train_net.py): argument handling that needs no training."""


def test_demo_followed_by_overrides_means_the_default_demo(train_net, capsys):
    """`--demo KEY VALUE` is the FPN demo with an override, not a demo named KEY."""
    rc = train_net.cli(["--dry-run", "--demo", "SOLVER.MAX_ITER", "7"])
    out = capsys.readouterr().out
    assert rc == 0 and "MAX_ITER: 7" in out, out[-2000:]
    rc = train_net.cli(["--demo", "two_stage", "--dry-run"])
    assert rc == 0 and "fast_rcnn" in capsys.readouterr().out


def test_run_tool_says_a_user_error_in_one_line(capsys):
    """resnext_det.apps.tool.run_tool: a user error is one line on stderr and exit status 2;
    an int result is the exit status, anything else is 0; other errors propagate."""
    import pytest

    from resnext_det.apps.tool import run_tool
    from resnext_det.config import ResNeXtConfigError

    def bad(argv):
        raise ResNeXtConfigError(f"MODEL.X={argv[0]!r} is not valid")

    assert run_tool("x.py", bad, ["7"]) == 2
    assert capsys.readouterr().err == "x.py: error: MODEL.X='7' is not valid\n"
    assert run_tool("x.py", lambda argv: 1, []) == 1
    assert run_tool("x.py", lambda argv: {"record": 1}, []) == 0
    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_tool("x.py", lambda argv: {}["k"], [])


def test_every_tool_reports_bad_input_the_same_way(tmp_path, capsys):
    """Each tool's command line (what tools/*.py run) says a bad input as ``PROG: error: ...``
    in one line with exit status 2."""
    from resnext_det import cli as train_net
    from resnext_det.apps import complexity, convert_weights, export, predict

    missing = str(tmp_path / "no_such.yaml")
    for prog, run, argv in [
        ("train_net.py", train_net.cli, ["--config", missing, "--dry-run"]),
        ("predict.py", predict.cli, ["--config-file", missing, "--input", str(tmp_path), "--output",
                                     str(tmp_path / "out")]),
        ("export.py", export.cli, ["--config-file", missing, "--output", str(tmp_path / "out")]),
        ("convert_weights.py", convert_weights.cli, [str(tmp_path / "no.pth"), str(tmp_path / "o.pkl")]),
        ("complexity.py", complexity.cli, ["--models", "X-77-3x3d"]),
    ]:
        assert run(argv) == 2, prog
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"{prog}: error: ") and "\n" not in err, err
