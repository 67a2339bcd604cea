"""tools/mutation.py writes benchmarks/<kind>/mutation.json through the one record writer: the
record validates against benchmarks/schema.json, and a later module or phase joins the earlier
ones (no mutation campaign runs here: the results are made up)."""
import importlib.util
import json
from pathlib import Path

import jsonschema

from resnext_det.apps.benchmark.protocol import environment

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "benchmarks" / "schema.json").read_text())


def _mutation_tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(killed: int) -> dict:
    return {"tests": ["tests/data/test_sampler.py"], "mutants": 10, "killed": killed, "timeout": 0,
            "survived": 10 - killed, "not_run_no_test_covers": 0, "other": {}, "equivalent": 0,
            "score": killed / 10, "survivors": {}, "equivalents": {}, "stale_equivalents": [], "wall_s": 1.0,
            "loadavg_at_start": [0.1, 0.1, 0.1], "commit": "abc1234", "dirty": False, "date": "2026-01-01"}


def test_the_record_validates_and_keeps_earlier_modules_and_phases(tmp_path):
    tool = _mutation_tool()
    env = environment()
    env["versions"]["mutmut"] = "0.0-test"
    out = tmp_path / "benchmarks" / env["cpu_kind"] / "mutation.json"
    tool.write_mutation_record(out, "data/sampler.py", "before", _result(4), env)
    record = tool.write_mutation_record(out, "data/sampler.py", "after", _result(9), env)
    record = tool.write_mutation_record(out, "config.py", "after", _result(7), env)

    assert json.loads(out.read_text()) == record
    jsonschema.validate(record, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert record["type"] == "mutation" and record["command"] == tool.COMMAND
    assert record["environment"]["versions"]["mutmut"] == "0.0-test"
    modules = record["results"]["modules"]
    assert modules["data/sampler.py"]["before"]["killed"] == 4
    assert modules["data/sampler.py"]["after"]["killed"] == 9
    assert modules["config.py"]["after"]["killed"] == 7
    assert record["results"]["score"] == tool.SCORE


def test_a_note_in_the_record_is_kept(tmp_path):
    tool = _mutation_tool()
    env = environment()
    out = tmp_path / "benchmarks" / env["cpu_kind"] / "mutation.json"
    tool.write_mutation_record(out, "config.py", "before", _result(3), env)
    record = json.loads(out.read_text())
    record["results"]["note"] = "written by hand"
    out.write_text(json.dumps(record))
    assert tool.write_mutation_record(out, "config.py", "after", _result(8), env)["results"]["note"] == \
        "written by hand"
