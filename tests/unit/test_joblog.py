"""The one line a finished job leaves (PYNOMALY_JOB_LOG): its fields and text, the JSON
formatter, and where the services write it (on SQLite, through the real logging
adapter): one line per job, ``duplicate`` for a redelivery, none when it is off."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pynomaly_workers.adapters.joblog import LoggingJobLog
from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.contract import DETECT_TASK, TRAIN_TASK
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.joblog import (
    JOB_LOGGER,
    JobLine,
    failure_line,
    printable,
    summary_line,
)
from pynomaly_workers.domain.jobs import JobSummary
from pynomaly_workers.observability import JsonFormatter, MaskSecrets
from pynomaly_workers.services.context import Adapters, NullJobLog
from pynomaly_workers.services.detection import DetectMessage, detect_batch, run_chunk
from pynomaly_workers.services.training import train_many, train_message
from pynomaly_workers.settings import Settings
from tests.factories import LIMITS, rows_with_outliers, training_rows, write_csv

FIELDS = {
    "event",
    "job_id",
    "task",
    "status",
    "model",
    "model_version",
    "records",
    "anomalies",
    "duration_ms",
    "queue_wait_ms",
    "error_type",
}


def a_summary(**changes: Any) -> JobSummary:
    values: dict[str, Any] = {
        "job_id": "job-7",
        "model": "m",
        "model_version": 3,
        "n_records": 200,
        "n_anomalies": 4,
        "threshold": 0.5,
        "cache_hits": 0,
        "duration_ms": 12.5,
        "top_anomalies": [],
    }
    values.update(changes)
    return JobSummary(**values)


# -- the line itself ------------------------------------------------------------------
def test_a_detection_line_carries_the_jobs_counts_and_timings() -> None:
    line = summary_line(a_summary(), task=DETECT_TASK, duration_ms=3.14159, queue_wait_ms=0.5)

    assert line.fields() == {
        "event": "job_finished",
        "job_id": "job-7",
        "task": DETECT_TASK,
        "status": "succeeded",
        "model": "m",
        "model_version": 3,
        "records": 200,
        "anomalies": 4,
        "duration_ms": 3.142,
        "queue_wait_ms": 0.5,
        "error_type": None,
    }
    assert str(line) == (
        "job job-7 succeeded: task=pynomaly.detect model=m@3 records=200 anomalies=4 "
        "duration_ms=3.142 queue_wait_ms=0.5"
    )


def test_a_redelivered_job_says_duplicate_and_a_failure_names_its_error() -> None:
    again = summary_line(a_summary(), task=DETECT_TASK, duration_ms=1, queue_wait_ms=None,
                         duplicate=True)  # fmt: skip
    failed = failure_line("job-8", task=DETECT_TASK, model="m@9", error_type="invalid_records",
                          duration_ms=None, queue_wait_ms=2.0)  # fmt: skip

    assert (again.status, again.records, again.fields()["queue_wait_ms"]) == (
        "duplicate",
        200,
        None,
    )
    assert failed.fields()["status"] == "failed"
    assert failed.fields()["error_type"] == "invalid_records"
    assert str(failed) == (
        "job job-8 failed: task=pynomaly.detect model=m@9 duration_ms=None queue_wait_ms=2.0 "
        "error_type=invalid_records"
    )


def test_a_producers_name_is_printed_bounded_on_one_line_and_masked() -> None:
    printed = printable("redis://u:secret@h/0\nINFO fake line" + "x" * 500)

    assert printed is not None
    assert "secret" not in printed
    assert "\n" not in printed
    assert len(printed) <= 140
    assert printable(None) is None


# -- logging ---------------------------------------------------------------------------
def record_of(line: JobLine) -> logging.LogRecord:
    return logging.LogRecord(JOB_LOGGER, logging.INFO, __file__, 1, line, None, None)


def test_the_json_formatter_puts_the_lines_fields_in_the_object() -> None:
    line = summary_line(a_summary(), task=DETECT_TASK, duration_ms=2.0, queue_wait_ms=1.0)
    record = record_of(line)

    assert MaskSecrets().filter(record)
    data = json.loads(JsonFormatter().format(record))

    assert set(data) >= FIELDS
    assert (data["level"], data["logger"]) == ("INFO", JOB_LOGGER)
    assert (data["job_id"], data["records"], data["anomalies"]) == ("job-7", 200, 4)
    assert data["message"] == "job job-7 succeeded"
    assert "task_name" not in data  # the job's own task_id stands in for the batch's task


def test_the_logging_adapter_writes_the_line_at_info_on_the_jobs_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=JOB_LOGGER)
    line = summary_line(a_summary(), task=DETECT_TASK, duration_ms=2.0, queue_wait_ms=1.0)

    LoggingJobLog().finished(line)

    assert [(r.name, r.levelno, r.msg) for r in caplog.records] == [
        (JOB_LOGGER, logging.INFO, line)
    ]


# -- the off switch ----------------------------------------------------------------------
def test_the_setting_picks_the_logging_adapter_or_none(
    sqlite_url: str, make_settings: Callable[..., Settings]
) -> None:
    on = bootstrap(make_settings(database_url=sqlite_url))
    off = bootstrap(make_settings(database_url=sqlite_url, job_log=False))

    assert isinstance(on.job_log, LoggingJobLog)
    assert on.job_log.enabled
    assert isinstance(off.job_log, NullJobLog)
    assert not off.job_log.enabled
    on.close()
    off.close()


def test_the_setting_reads_pynomaly_job_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYNOMALY_JOB_LOG", "false")
    assert Settings().job_log is False
    monkeypatch.setenv("PYNOMALY_JOB_LOG", "true")
    assert Settings().job_log is True


# -- where the services write it -----------------------------------------------------------
@pytest.fixture
def make_adapters(
    sqlite_url: str, make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., Adapters]]:
    built: list[Adapters] = []

    def factory(**overrides: Any) -> Adapters:
        adapters = bootstrap(make_settings(database_url=sqlite_url, **overrides))
        built.append(adapters)
        return adapters

    yield factory
    for adapters in built:
        adapters.close()


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Callable[[], list[JobLine]]:
    caplog.set_level(logging.INFO, logger=JOB_LOGGER)
    return lambda: [r.msg for r in caplog.records if isinstance(r.msg, JobLine)]


def trained(adapters: Adapters, *, model: str = "m") -> None:
    records = training_rows()
    train_message(adapters, {"model": model, "records": records, "params": {"n_estimators": 25}},
                  task_id=f"train-{model}")  # fmt: skip


def detection(job_id: str, rows: list[list[float]], *, wait: float | None = 0.002) -> DetectMessage:
    kwargs = {"job_id": job_id, "model": "m", "records": rows}
    return DetectMessage(task_id=f"task-{job_id}", kwargs=kwargs, queue_wait_s=wait)


def test_each_job_of_a_batch_leaves_one_line_with_its_own_counts(
    make_adapters: Callable[..., Adapters], lines: Callable[[], list[JobLine]]
) -> None:
    # Given a trained model
    adapters = make_adapters()
    trained(adapters)
    before = len(lines())

    # When a batch of two jobs, one with outliers, and one of bad width runs
    outcomes = detect_batch(adapters, [
        detection("a", rows_with_outliers(n=50, outliers=(3, 7))),
        detection("b", rows_with_outliers(n=20, outliers=()), wait=None),
        detection("c", [[1.0, 2.0]]),
    ])  # fmt: skip

    # Then each job wrote exactly one line, with the counts of its own summary
    written = {line.job_id: line for line in lines()[before:]}
    assert len(lines()) - before == 3
    summaries = {o.summary.job_id: o.summary for o in outcomes if hasattr(o, "summary")}
    for job_id in ("a", "b"):
        line = written[job_id]
        assert (line.task, line.status, line.model) == (DETECT_TASK, "succeeded", "m")
        assert line.model_version == summaries[job_id].model_version
        assert line.records == summaries[job_id].n_records
        assert line.anomalies == summaries[job_id].n_anomalies
        assert line.duration_ms is not None
        assert line.duration_ms > 0
    assert written["a"].anomalies is not None
    assert written["a"].anomalies >= 2
    assert written["a"].queue_wait_ms == 2.0
    assert written["a"].fields()["task_id"] == "task-a"  # the job's task, not the batch's
    assert written["b"].queue_wait_ms is None
    assert (written["c"].status, written["c"].error_type) == ("failed", "invalid_records")


def test_a_redelivered_job_says_duplicate_once_in_a_batch_and_across_batches(
    make_adapters: Callable[..., Adapters], lines: Callable[[], list[JobLine]]
) -> None:
    adapters = make_adapters()
    trained(adapters)
    rows = rows_with_outliers(n=30, outliers=(1,))
    before = len(lines())

    # When the same job comes twice in one batch, then again in a later batch
    detect_batch(adapters, [detection("d", rows), detection("d", rows)])
    detect_batch(adapters, [detection("d", rows)])

    # Then it succeeded once, and each redelivery said duplicate with the stored counts
    written = lines()[before:]
    assert [line.status for line in written] == ["succeeded", "duplicate", "duplicate"]
    assert len({(line.records, line.anomalies) for line in written}) == 1


def test_a_fanned_out_job_leaves_one_line_when_its_last_chunk_ends(
    make_adapters: Callable[..., Adapters], lines: Callable[[], list[JobLine]], tmp_path: Path
) -> None:
    # Given a source of 4 chunks
    adapters = make_adapters(chunk_rows=250)
    trained(adapters)
    path = str(write_csv(tmp_path / "s.csv", rows_with_outliers(n=1000, outliers=(5, 600))))
    before = len(lines())

    # When it is planned, then its chunks run (one of them twice)
    message = DetectMessage(
        "task-f", {"job_id": "f", "model": "m", "source": path}, queue_wait_s=0.25
    )
    (planned,) = detect_batch(adapters, [message])
    assert len(lines()) == before  # planning finishes nothing
    chunks = planned.chunks  # type: ignore[union-attr]
    assert len(chunks) == 4
    for chunk in [*chunks, chunks[-1]]:
        run_chunk(adapters, chunk)

    # Then one line, for the whole job, with the job's wait from its planning
    (line,) = lines()[before:]
    assert (line.job_id, line.status, line.records) == ("f", "succeeded", 1000)
    assert line.anomalies is not None
    assert line.anomalies >= 2
    assert line.queue_wait_ms == 250.0


def test_training_leaves_one_line_per_model_and_duplicate_on_redelivery(
    make_adapters: Callable[..., Adapters], lines: Callable[[], list[JobLine]]
) -> None:
    adapters = make_adapters()
    message = {"model": "t", "records": training_rows(), "params": {"n_estimators": 10}}
    before = len(lines())

    # When one message trains, is redelivered, and a train_many of two good items and a bad one runs
    first = train_message(adapters, message, task_id="tt-1", queue_wait_s=0.1)
    train_message(adapters, message, task_id="tt-1", queue_wait_s=0.1)
    with pytest.raises(InvalidInput):
        train_message(adapters, {"model": "t", "records": [[1.0]]}, task_id="tt-2")
    items: list[object] = [message, {**message, "model": "u"}, {"model": "v", "records": "no"}]
    train_many(adapters, items, task_id="many-1", limits=LIMITS, queue_wait_s=0.2)

    # Then each model trained has its line, the redelivery says duplicate, failures fail
    written = [(x.job_id, x.task, x.status, x.model) for x in lines()[before:]]
    assert written == [
        ("tt-1", TRAIN_TASK, "succeeded", "t"),
        ("tt-1", TRAIN_TASK, "duplicate", "t"),
        ("tt-2", TRAIN_TASK, "failed", "t"),
        ("many-1:0", TRAIN_TASK, "succeeded", "t"),
        ("many-1:1", TRAIN_TASK, "succeeded", "u"),
        ("many-1:2", TRAIN_TASK, "failed", "v"),
    ]
    line = lines()[before]
    assert (line.model_version, line.records) == (first.version, first.n_training_rows)
    assert line.queue_wait_ms == 100.0


def test_with_the_setting_off_no_job_leaves_a_line(
    make_adapters: Callable[..., Adapters], lines: Callable[[], list[JobLine]]
) -> None:
    adapters = make_adapters(job_log=False)
    trained(adapters)
    detect_batch(adapters, [detection("off", rows_with_outliers(n=10, outliers=()))])

    assert lines() == []
