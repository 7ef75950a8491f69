"""Thresholds by intent through the services and a real store: a projection from the
counts detection keeps, a change recorded and in force for the version (which stays as
registered), rollbacks, history, and alert precision from triage's labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.cli.thresholds import with_precision
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.incidents import check_label
from pynomaly_workers.domain.models import ModelRef
from pynomaly_workers.domain.thresholds import AlertPrecision, Intent
from pynomaly_workers.services import thresholds as service
from pynomaly_workers.services.context import Adapters, NullTelemetry
from pynomaly_workers.services.detection import (
    DetectMessage,
    FannedOut,
    detect_batch,
    run_chunk,
    run_detection,
)
from pynomaly_workers.services.maintenance import run_maintenance
from pynomaly_workers.settings import Settings
from tests.factories import train, write_csv

pytestmark = pytest.mark.integration


@pytest.fixture
def adapters(store_url: str, make_settings: Callable[..., Settings]) -> Iterator[Adapters]:
    built = bootstrap(make_settings(database_url=store_url, drift_flush_seconds=0))
    yield built
    built.close()


def traffic(n: int = 3000, seed: int = 4) -> list[list[float]]:
    """Standard-normal rows with a tail: a tenth of them spread further out."""
    rows = np.random.default_rng(seed).normal(size=(n, 4))
    rows[: n // 10] *= 2.5
    return rows.round(6).tolist()  # type: ignore[no-any-return]


def detect(adapters: Adapters, model: str, rows: list[list[float]], job_id: str) -> int:
    """Score ``rows`` with ``model`` in process; the anomalies the job raised."""
    return run_detection(
        adapters, {"model": model, "records": rows}, default_job_id=job_id
    ).n_anomalies


def test_a_projection_matches_the_alerts_detection_then_raises(adapters: Adapters) -> None:
    # Given a version that scored some traffic
    trained = train(adapters, model="m")
    rows = traffic()
    before = detect(adapters, "m", rows, "first")

    # When a threshold for fewer alerts is projected and applied
    plan = service.plan_threshold(adapters, "m@1", Intent("alerts_per_day", 0), days=1)
    target = before / 3 / plan.projection.days_observed
    plan = service.plan_threshold(adapters, "m@1", Intent("alerts_per_day", target), days=1)
    change = service.apply_threshold(adapters, plan, actor="ana", reason="too noisy")

    # Then the same traffic raises exactly the projected alerts, about the target
    assert plan.projection.current_alerts == before
    assert plan.projection.alerts_exact
    after = detect(adapters, "m", rows, "replay")
    assert after == plan.projection.alerts
    assert after == pytest.approx(before / 3, rel=0.1)
    # And the version reads with the threshold in force; its registration is unchanged
    version = adapters.store.get_model(ModelRef("m", 1))
    assert version.threshold == plan.threshold == change.threshold
    assert version.trained_threshold == trained.threshold
    assert adapters.store.get_active_models(["m"])["m"].threshold == plan.threshold
    (listed,) = adapters.store.list_models(name="m")
    assert listed.threshold == plan.threshold
    assert version.artifact_sha256 == trained.artifact_sha256


def test_changes_are_recorded_and_rolled_back_like_aliases(adapters: Adapters) -> None:
    # Given a version with two threshold changes
    trained = train(adapters, model="m")
    detect(adapters, "m", traffic(), "scored")
    first = service.apply_threshold(
        adapters,
        service.plan_threshold(adapters, "m@1", Intent("contamination", 0.02), days=1),
        actor="ana",
        reason="fewer",
    )
    second = service.apply_threshold(
        adapters,
        service.plan_threshold(adapters, "m@1", Intent("contamination", 0.01), days=1),
        actor="bo",
        reason="fewer still",
    )
    assert (first.previous_threshold, second.previous_threshold) == (
        trained.threshold,
        first.threshold,
    )

    # When the last change is rolled back, twice
    back = service.rollback_threshold(adapters, "m@1", actor="cy", reason="too quiet", days=1)
    assert adapters.store.get_model(ModelRef("m", 1)).threshold == first.threshold
    again = service.rollback_threshold(adapters, "m@1", actor="cy", reason="undo", days=1)

    # Then the second rollback undoes the first, and the history has every step
    assert (back.threshold, again.threshold) == (first.threshold, second.threshold)
    assert adapters.store.get_model(ModelRef("m", 1)).threshold == second.threshold
    _, history = service.threshold_history(adapters, "m@1")
    assert [(c.action, c.actor, c.reason) for c in history] == [
        ("rollback", "cy", "undo"),
        ("rollback", "cy", "too quiet"),
        ("set", "bo", "fewer still"),
        ("set", "ana", "fewer"),
    ]
    assert history[-1].intent == {"kind": "contamination", "value": 0.02, "days": 1}
    assert history[-1].projection["threshold"] == first.threshold
    assert history[0].intent == {"kind": "rollback", "of_change": back.id}
    assert history[0].projection["threshold"] == second.threshold


def label_top(adapters: Adapters, model: str, labels: list[str]) -> list[float]:
    """Label the most severe anomalies of ``model``, in order; their scores."""
    found = adapters.store.list_anomalies(model=model, limit=len(labels))
    for anomaly, label in zip(found, labels, strict=True):
        assert anomaly.id is not None
        adapters.store.label_anomaly(
            anomaly.id, label=check_label(label), by="ana", comment=None, now=adapters.clock.now()
        )
    return [a.score for a in found]


def test_a_precision_target_raises_the_threshold_past_the_false_alarms(adapters: Adapters) -> None:
    # Given a version whose top anomalies are labelled: 4 right, then 2 wrong, then 2 right
    train(adapters, model="m")
    detect(adapters, "m", traffic(), "scored")
    scores = label_top(adapters, "m", ["anomaly"] * 4 + ["not_anomaly"] * 2 + ["anomaly"] * 2)

    # When a precision of 1 is asked for, it keeps the top 4; 0.75 keeps all 8
    strict = service.plan_threshold(adapters, "m@1", Intent("precision", 1.0), days=1)
    loose = service.plan_threshold(adapters, "m@1", Intent("precision", 0.75), days=1)

    # Then
    assert scores[4] <= strict.threshold < scores[3]
    assert (strict.projection.labelled, strict.projection.confirmed) == (4, 4)
    assert loose.threshold < scores[7]
    assert (loose.projection.labelled, loose.projection.confirmed) == (8, 6)
    # And once the top one turns out wrong, nothing reaches 1: the best is 6 of 8
    label_top(adapters, "m", ["not_anomaly"])
    with pytest.raises(InvalidInput, match=r"no threshold reaches precision 1 .*best is 0\.750"):
        service.plan_threshold(adapters, "m@1", Intent("precision", 1.0), days=1)


def test_alert_precision_counts_stored_anomalies_and_shadow_flags(
    store_url: str, make_settings: Callable[..., Settings]
) -> None:
    adapters = bootstrap(make_settings(database_url=store_url, shadow_fraction=1.0))
    try:
        # Given a champion and a challenger that shadowed every record of one job
        train(adapters, model="m")
        train(adapters, model="m", algorithm="elliptic")
        adapters.store.set_alias("m", "champion", 1, now=adapters.clock.now())
        adapters.store.set_alias("m", "challenger", 2, now=adapters.clock.now())
        detect(adapters, "m@champion", traffic(), "shadowed")
        # When triage labels the champion's 6 most severe anomalies
        label_top(
            adapters, "m", ["anomaly", "anomaly", "anomaly", "not_anomaly", "expected", "anomaly"]
        )
        labelled = adapters.store.list_anomalies(model="m", limit=6)

        # Then the champion's precision is 4 of 6
        found = {p.version: p for p in service.alert_precision(adapters, name="m")}
        assert (found[1].labelled, found[1].confirmed) == (6, 4)
        assert found[1].precision == pytest.approx(4 / 6)
        # and the challenger's shadow flags count where they hit a labelled record
        challenger = found[2]
        flagged = shadow_flags(adapters)
        hits = [a for a in labelled if (a.job_id, a.record_index) in flagged]
        assert challenger.shadow_flags == len(flagged)
        assert challenger.shadow_labelled == len(hits)
        assert challenger.shadow_labelled > 0
        expected = [a for a in hits if labels_of(adapters, a.id) == "anomaly"]
        assert challenger.shadow_confirmed == len(expected)
        assert (challenger.labelled, found[1].shadow_flags) == (0, 0)
        # and another model's labels count for it alone
        train(adapters, model="n")
        detect(adapters, "n", traffic(n=600), "other")
        label_top(adapters, "n", ["not_anomaly"])
        assert service.alert_precision(adapters, name="m") == list(found.values())
        everyone = {(p.model, p.version): p for p in service.alert_precision(adapters)}
        assert set(everyone) == {("m", 1), ("m", 2), ("n", 1)}
        assert (everyone["n", 1].labelled, everyone["n", 1].precision) == (1, 0.0)
    finally:
        adapters.close()


def shadow_flags(adapters: Adapters) -> set[tuple[str, int]]:
    from sqlalchemy import text

    from tests.factories import engine_of

    with engine_of(adapters).connect() as conn:
        rows = conn.execute(text("SELECT job_id, record_index FROM shadow_anomalies")).all()
    return {(str(j), int(i)) for j, i in rows}


def labels_of(adapters: Adapters, anomaly_id: int | None) -> str:
    assert anomaly_id is not None
    return adapters.store.anomaly_labels(anomaly_id)[0].label


@pytest.mark.parametrize(
    ("model", "intent", "message"),
    [
        ("m", Intent("alerts_per_day", 5), r"'m' is version 1 now, so pass 'm@1'"),
        ("m@9", Intent("alerts_per_day", 5), "has no version 9"),
        ("m@1", Intent("alerts_per_day", 5), "counted no scores of m@1 in the last 1 days"),
    ],
)
def test_mistakes_say_what_to_do(
    adapters: Adapters, model: str, intent: Intent, message: str
) -> None:
    train(adapters, model="m")
    with pytest.raises(InvalidInput, match=message):
        service.plan_threshold(adapters, model, intent, days=1)


def test_a_precision_needs_labels_and_a_rollback_needs_a_change(adapters: Adapters) -> None:
    train(adapters, model="m")
    detect(adapters, "m", traffic(n=600), "scored")
    with pytest.raises(InvalidInput, match=r"no labelled anomalies.*anomalies label ID"):
        service.plan_threshold(adapters, "m@1", Intent("precision", 0.9), days=1)
    with pytest.raises(InvalidInput, match=r"scored 1\.44e\+04 records a day .* ask for fewer"):
        service.plan_threshold(adapters, "m@1", Intent("alerts_per_day", 20_000), days=1)
    with pytest.raises(InvalidInput, match="never had its threshold changed"):
        service.rollback_threshold(adapters, "m@1", actor="a", reason="b", days=1)


class RecordingTelemetry(NullTelemetry):
    """Keeps what the services reported of alert precision."""

    def __init__(self) -> None:
        self.precision: list[AlertPrecision] = []

    def alert_precision(self, precision: AlertPrecision) -> None:
        self.precision.append(precision)


def test_the_drift_run_reports_alert_precision_and_compare_shows_it(
    store_url: str, make_settings: Callable[..., Settings]
) -> None:
    telemetry = RecordingTelemetry()
    built = bootstrap(make_settings(database_url=store_url, shadow_fraction=1.0))
    adapters = dataclasses.replace(built, telemetry=telemetry)
    try:
        # Given a champion whose top anomalies are labelled, shadowed by a challenger
        train(adapters, model="m")
        train(adapters, model="m", algorithm="elliptic")
        adapters.store.set_alias("m", "champion", 1, now=adapters.clock.now())
        adapters.store.set_alias("m", "challenger", 2, now=adapters.clock.now())
        detect(adapters, "m@champion", traffic(), "shadowed")
        label_top(adapters, "m", ["anomaly", "not_anomaly", "anomaly"])

        # When the drift maintenance run goes
        run = run_maintenance(adapters, "drift")

        # Then it reported both versions' precision, as the store counts it
        expected = service.alert_precision(adapters, name="m")
        assert run.detail["labelled"] == len(expected) == 2
        assert telemetry.precision == expected
        assert (expected[0].labelled, expected[0].confirmed) == (3, 2)
        # and models compare shows the champion's and the challenger's
        (pair,) = with_precision(adapters, "m", adapters.store.shadow_comparison("m"))
        assert pair["champion_labelled"] == 3
        assert pair["champion_precision"] == pytest.approx(2 / 3)
        assert pair["challenger_shadow_labelled"] == expected[1].shadow_labelled
        assert pair["challenger_shadow_precision"] == expected[1].shadow_precision
    finally:
        built.close()


def test_a_fanned_out_job_keeps_the_threshold_it_was_planned_with(
    adapters: Adapters, tmp_path: Path
) -> None:
    # Given a file of several chunks, scored once as a whole
    version = train(adapters, model="m")
    path = write_csv(tmp_path / "s.csv", traffic(n=2000))
    scoped = dataclasses.replace(
        adapters, settings=adapters.settings.model_copy(update={"chunk_rows": 300})
    )
    whole = run_detection(scoped, {"model": "m@1", "source": str(path)}, default_job_id="whole")

    # When the threshold changes after the first chunk of a second job
    (fanned,) = detect_batch(
        scoped, [DetectMessage("task-2", {"model": "m@1", "source": str(path)})]
    )
    assert isinstance(fanned, FannedOut)
    assert len(fanned.chunks) > 2
    run_chunk(scoped, fanned.chunks[0])
    adapters.store.set_threshold(
        version.id,
        version.threshold + 0.05,
        intent={},
        projection={},
        actor="a",
        reason=None,
        now=adapters.clock.now(),
    )
    last = [run_chunk(scoped, chunk) for chunk in fanned.chunks[1:]][-1]

    # Then the whole job used the threshold it was planned with
    assert last.job.status == "succeeded"
    assert last.job.threshold == version.threshold
    assert last.job.n_anomalies == whole.n_anomalies
    # and the next job uses the new one
    after = run_detection(scoped, {"model": "m@1", "source": str(path)}, default_job_id="after")
    assert after.threshold == version.threshold + 0.05
    assert after.n_anomalies < whole.n_anomalies
