"""The JSON object ``make faults`` prints last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.report import REPORT_ENV, ScenarioReport, main, record_scenario


def test_each_scenario_is_one_entry_and_a_rerun_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "faults.jsonl"
    monkeypatch.setenv(REPORT_ENV, str(report))
    record_scenario("restart", ScenarioReport(10, 9, 0, 1, 0, 5.0))
    record_scenario("poison", ScenarioReport(6, 0, 6, 0, 0, None))
    record_scenario("restart", ScenarioReport(10, 10, 0, 0, 0, 4.0))

    assert main([str(report)]) == 0

    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["scenarios"]["restart"] == {
        "submitted": 10,
        "succeeded": 10,
        "failed_with_reason": 0,
        "lost": 0,
        "duplicated": 0,
        "recovery_seconds": 4.0,
        "extra": {},
    }
    assert printed["scenarios"]["poison"]["failed_with_reason"] == 6
