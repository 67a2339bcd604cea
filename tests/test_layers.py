"""The package's layers (docs/ARCHITECTURE.md) hold: import-linter's contract in .importlinter
(applications on engine | deploy, those on modeling | weights | data, those on the ground floor;
engine and deploy never import each other) passes on the installed code."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contract_holds():
    exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    r = subprocess.run([exe, "--no-cache", os.path.join(ROOT, ".importlinter")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken" in r.stdout, r.stdout[-2000:]


def test_contract_catches_an_upward_import(tmp_path):
    """The check is real: a copy of the package where deploy imports engine breaks it."""
    pkg = tmp_path / "resnext_det"
    shutil.copytree(os.path.join(ROOT, "resnext_det"), pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.yaml"))
    with open(pkg / "deploy" / "predictor.py", "a") as f:
        f.write("\nfrom ..engine import trainer  # noqa\n")
    exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    r = subprocess.run([exe, "--no-cache", os.path.join(ROOT, ".importlinter")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert r.returncode != 0
    assert "resnext_det.deploy.predictor -> resnext_det.engine" in r.stdout, r.stdout[-3000:]
