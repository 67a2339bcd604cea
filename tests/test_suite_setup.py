"""The suite's own set-up (tests/conftest.py): the commands it starts send no OpenVINO / NNCF
telemetry (each NNCF export would otherwise start it, and wait on DNS lookups offline), and the
fuzz tests keep Hypothesis's default profile although CI is set."""
import zygote


def test_commands_the_suite_starts_decline_openvino_telemetry():
    code = ("from openvino_telemetry.utils.opt_in_checker import OptInChecker\n"
            "print(OptInChecker().check(False, disable_in_ci=True).name)")  # what ovc and NNCF ask
    r = zygote.run(["-c", code], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["DECLINED"], r.stdout


def test_fuzz_tests_keep_hypothesis_default_profile():
    from hypothesis import settings

    assert settings.default == settings.get_profile("default")
    assert not settings.default.derandomize
