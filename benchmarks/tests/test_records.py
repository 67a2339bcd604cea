"""Every record in benchmarks/<kind>/*.json is one envelope (benchmarks/schema.json), filed under
the CPU kind its environment names; and what the one writer writes validates too."""
import glob
import json
import os
from pathlib import Path

import jsonschema
import pytest

from resnext_det.apps.benchmark.protocol import environment, write_record
from resnext_det.hardware import CPU_KINDS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "benchmarks" / "schema.json").read_text())
RECORDS = sorted(glob.glob(str(ROOT / "benchmarks" / "*" / "*.json")))


def _validate(record):
    jsonschema.validate(record, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_the_schema_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", [os.path.relpath(p, ROOT) for p in RECORDS])
def test_every_record_validates_and_sits_in_its_kinds_folder(path):
    kind = Path(path).parent.name
    assert kind in CPU_KINDS, f"{path}: benchmarks/<kind>/ holds records only, kinds: {CPU_KINDS}"
    record = json.loads((ROOT / path).read_text())
    _validate(record)
    assert record["environment"]["cpu_kind"] == kind


def test_the_writer_writes_the_envelope(tmp_path):
    env = environment()
    path = tmp_path / "benchmarks" / env["cpu_kind"] / "x.json"
    results = {"aa_control": False, "control_note": "a test", "settings": {}, "controls": [],
               "paths": [{"name": "fpn", "preset": "X", "mode": "fast", "seconds": 1.0, "ratio": None}]}
    rec = write_record(str(path), "benchmark", results, env, what="a test", command="pytest")
    assert json.loads(path.read_text()) == rec
    _validate(rec)
    assert len(rec["environment"]["loadavg_at_end"]) == 3 and isinstance(rec["environment"]["cpu_flags"], list)
    with pytest.raises(jsonschema.ValidationError):  # an old key is refused
        _validate({**rec, "results": {**results, "paths": [{**results["paths"][0], "ratio_vs_stock": 1.0}]}})
