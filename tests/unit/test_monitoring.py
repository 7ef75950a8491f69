"""deploy/monitoring/: the alert rules pass promtool's checks and unit tests (each alert
firing and not firing), the maintenance alerts follow the beat schedule, the dashboard is
well formed, and the README's metric table names exactly what the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pynomaly_workers.metrics import METRIC_NAMES
from pynomaly_workers.schedules import DEFAULT_INTERVALS

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "prometheus" / "alerts.yml"
RULE_TESTS = MONITORING / "prometheus" / "alerts_test.yml"
# The rules whose durations run to days, evaluated hourly (minutely would take minutes).
RULE_TESTS_DAYS = MONITORING / "prometheus" / "alerts_days_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "pynomaly-workers.json"
NAME = re.compile(r"\bpynomaly_[a-z0-9_]+")
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run 'make tools' (Debian package prometheus)")
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False)


def family(name: str) -> str:
    for part in HISTOGRAM_PARTS:
        if name.endswith(part) and name.removesuffix(part) in METRIC_NAMES:
            return name.removesuffix(part)
    return name


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 22 rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS), str(RULE_TESTS_DAYS))
    assert done.returncode == 0, done.stdout + done.stderr


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {r["alert"] for r in rules()}
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in (RULE_TESTS, RULE_TESTS_DAYS):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == alerts
    assert quiet == alerts


def two_intervals(seconds: float) -> int:
    """When a maintenance task is overdue: two of its intervals, at least 10 minutes."""
    return int(max(2 * seconds, 600))


def duration_seconds(text: str) -> int:
    number, unit = int(text[:-1]), text[-1]
    return number * {"m": 60, "h": 3_600, "d": 86_400}[unit]


def test_every_scheduled_task_has_an_absent_alert_after_two_of_its_intervals() -> None:
    # absent() covers a task no worker reports (never run, or not since a restart)
    absent = re.compile(
        r'^absent\(pynomaly_maintenance_last_success_timestamp_seconds\{task="(\w+)"\}\)$'
    )
    found: dict[str, int] = {}
    for rule in rules():
        if rule["alert"] == "PynomalyMaintenanceNeverSucceeded":
            match = absent.match(rule["expr"].strip())
            assert match is not None, rule["expr"]
            assert rule["labels"]["task"] == match.group(1)
            found[match.group(1)] = duration_seconds(rule["for"])
    assert found == {task: two_intervals(s) for task, s in DEFAULT_INTERVALS.items()}


def test_the_overdue_alert_gives_every_scheduled_task_two_of_its_intervals() -> None:
    (rule,) = [r for r in rules() if r["alert"] == "PynomalyMaintenanceNotRun"]
    clause = re.compile(r'\{task=~?"([\w|]+)"\}\)\) > (\d+)')
    found = {
        task: int(threshold)
        for tasks, threshold in clause.findall(rule["expr"])
        for task in tasks.split("|")
    }
    assert found == {task: two_intervals(s) for task, s in DEFAULT_INTERVALS.items()}


def test_a_broken_rule_test_fails(tmp_path: Path) -> None:
    # promtool really evaluates the expectations: the first case checked at 9m passes
    # alone, and fails once that check is moved to 3m (one case, not the whole file:
    # promtool takes seconds over all of them)
    document = yaml.safe_load(RULE_TESTS.read_text())
    case = next(
        c
        for c in document["tests"]
        if any(check["eval_time"] == "9m" for check in c["alert_rule_test"])
    )
    (tmp_path / "alerts.yml").write_text(RULES.read_text())
    whole, broken = tmp_path / "whole_test.yml", tmp_path / "broken_test.yml"
    whole.write_text(yaml.safe_dump({**document, "tests": [case]}))
    for check in case["alert_rule_test"]:
        if check["eval_time"] == "9m":
            check["eval_time"] = "3m"
            break
    broken.write_text(yaml.safe_dump({**document, "tests": [case]}))
    assert promtool("test", "rules", str(whole)).returncode == 0
    assert promtool("test", "rules", str(broken)).returncode != 0


def test_rules_and_dashboard_use_only_exported_names() -> None:
    for path in (RULES, DASHBOARD):
        used = {family(n) for n in NAME.findall(path.read_text())}
        assert used, path
        assert used - set(METRIC_NAMES) == set(), path.name


def test_the_dashboard_is_grafana_json_with_unique_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert dashboard["uid"] == "pynomaly-workers"
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)


def test_the_readme_table_lists_every_metric() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(pynomaly_[a-z0-9_]+)`", readme, flags=re.MULTILINE))
    assert documented == set(METRIC_NAMES)
