"""docker/prometheus: the config and every rule file pass promtool, and the alerting rules
pass their unit tests (docker/prometheus/tests). Skipped, with the reason, without promtool;
CI installs it (Debian's `prometheus` package, see .ci/run)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.docker.dockerfiles import DOCKER

PROMETHEUS = DOCKER / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install -y prometheus)"
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_check_config_passes():
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_alerting_rules_pass_their_unit_tests():
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    result = promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_has_unit_tests_and_every_alert_is_tested():
    tested_files, tested_alerts = set(), set()
    for test in (PROMETHEUS / "tests").glob("*.yml"):
        spec = yaml.safe_load(test.read_text())
        tested_files |= {(test.parent / f).resolve() for f in spec["rule_files"]}
        tested_alerts |= {
            case["alertname"] for t in spec["tests"] for case in t.get("alert_rule_test", [])
        }
    for rules in (PROMETHEUS / "rules").glob("*.yml"):
        assert rules.resolve() in tested_files, f"{rules.name} has no promtool unit test"
        groups = yaml.safe_load(rules.read_text())["groups"]
        alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
        assert alerts <= tested_alerts, f"untested alerts: {sorted(alerts - tested_alerts)}"


def test_alerts_carry_a_severity_and_a_summary():
    for rules in (PROMETHEUS / "rules").glob("*.yml"):
        for group in yaml.safe_load(rules.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["labels"]["severity"] in ("critical", "warning", "info")
                    assert rule["annotations"]["summary"]
