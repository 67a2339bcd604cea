"""What the package's imports pull in. The deploy extra (onnx, onnxruntime, openvino) is
optional, so tools/train_net.py, tools/export.py --help and tools/benchmark.py must import
without it; and train_net.py does not import the demo's drawing libraries, which only a
finished --demo run uses (the lazy imports that keep both true say why, with measured times)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one worker: the module fixture below is a fresh interpreter (3-4 s), started once
pytestmark = pytest.mark.xdist_group("test_imports")


def _python(code):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout


def test_command_lines_import_and_fail_clearly_without_the_deploy_extra():
    out = _python("""
        import sys
        for name in ("onnx", "onnxruntime", "openvino"):
            sys.modules[name] = None  # importing it now raises ImportError, as when not installed
        import resnext_det.cli
        import resnext_det.deploy
        import resnext_det.apps.export
        import resnext_det.apps.benchmark as bench
        from resnext_det.deploy import DeployError
        from resnext_det.deploy.runtimes import make_runtime

        resnext_det.cli.get_parser().parse_args(["--config", "x.yaml"])
        resnext_det.apps.export.get_parser().parse_args(["--config", "x.yaml", "--output", "d"])
        try:
            make_runtime("onnxruntime", b"")
        except DeployError as e:
            assert "not installed" in str(e) and "pip install -e .[deploy]" in str(e), e
        else:
            raise AssertionError("make_runtime without onnxruntime did not raise")
        assert bench.runtimes_available(["onnxruntime", "openvino"]) == []
        assert bench.runtime_gemm_ceiling("openvino", n=8) is None
        print("ok")
    """)
    assert out.strip().endswith("ok")


# One fresh interpreter answers the three questions below (each a process start: 3 s of CPU):
# what importing the package changes in the process-wide filters, what train_net's module pulls
# in, and what every command line's module pulls in.
_FACTS = """
    import json, logging, sys, warnings
    from resnext_det._warnings import KNOWN_THIRD_PARTY_LOG_WARNINGS, KNOWN_THIRD_PARTY_WARNINGS
    ours = {m for _, _, m, _ in KNOWN_THIRD_PARTY_WARNINGS}
    names = {""} | {n for n, _, _ in KNOWN_THIRD_PARTY_LOG_WARNINGS}

    def filters():
        return {"warning_filters": [f[1].pattern for f in warnings.filters if f[1] is not None and f[1].pattern in ours],
                "logger_filters": [n for n in names if logging.getLogger(n).filters]}

    import resnext_det.cli
    lazy = ("onnx", "onnxruntime", "openvino", "resnext_det.apps.demo", "detectron2.utils.visualizer",
            "matplotlib.figure")
    facts = {"train_net_imports": sorted(m for m in lazy if m in sys.modules)}
    import resnext_det, resnext_det.apps.export, resnext_det.apps.benchmark, resnext_det.apps.benchmark.suites
    import resnext_det.apps.predict, resnext_det.apps.complexity
    facts["after_import"] = filters()
    facts["benchmarks"] = sorted(m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks."))
    resnext_det.cli.filter_known_third_party_warnings()  # what cli()/main() do first
    facts["after_cli_filters"] = filters()
    print(json.dumps(facts))
"""


@pytest.fixture(scope="module")
def facts():
    return json.loads(_python(_FACTS).strip().splitlines()[-1])


def test_the_package_never_imports_the_checkouts_benchmarks_folder(facts):
    """benchmarks/ (records, renderer, campaigns) is not installed: importing every command
    line of the package, the benchmark included, loads nothing from it."""
    assert facts["benchmarks"] == []


def test_train_net_does_not_import_runtimes_or_demo_drawing(facts):
    assert facts["train_net_imports"] == []


def test_importing_the_package_changes_no_process_wide_filters(facts):
    """Library import leaves the warning filters and the loggers' filters as they were; only
    the command lines install the known third-party filters, for their own process."""
    assert facts["after_import"] == {"warning_filters": [], "logger_filters": []}
    assert facts["after_cli_filters"]["warning_filters"]
