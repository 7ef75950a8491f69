"""``pynomaly.train_many`` through the service layer on SQLite and PostgreSQL: each item
its own version, a bad item failing alone, and idempotency by task id per item."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import select

from pynomaly_workers.adapters.stores.tables import ModelRow
from pynomaly_workers.domain.jobs import TRAINING_TASK_ID_MAX_LENGTH, parse_training_batch
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection import record_limits
from pynomaly_workers.services.training import train_many
from tests.factories import training_rows

pytestmark = pytest.mark.integration
TASK_ID = "0b8f6c1e-7d2a-4f5e-9c3b-1a2b3c4d5e6f"


def item(model: str, **extra: Any) -> dict[str, Any]:
    """One model's pynomaly.train arguments (a small forest keeps the test quick)."""
    return {"model": model, "records": training_rows(), "params": {"n_estimators": 25}, **extra}


MODELS = [item("pump-1"), item("pump-2", records=training_rows(5)), item("pump-3")]


def send(adapters: Adapters, models: list[Any], *, task_id: str = TASK_ID) -> dict[str, Any]:
    """What the task does with one delivery of the message."""
    items = parse_training_batch({"models": models}, task_id=task_id, max_models=10)
    return train_many(adapters, items, task_id=task_id, limits=record_limits(adapters))


def versions(adapters: Adapters) -> list[tuple[str, int, str | None]]:
    """Every registered version (name, version, training task id), read from the table."""
    query = select(ModelRow.name, ModelRow.version, ModelRow.training_task_id).order_by(
        ModelRow.name, ModelRow.version.desc()
    )
    with adapters.store.engine.connect() as conn:  # type: ignore[attr-defined]
        return [(name, version, task) for name, version, task in conn.execute(query)]


def test_each_model_is_its_own_version_and_a_bad_one_fails_alone(adapters: Adapters) -> None:
    # Given three models, the second with too few rows to train on
    # When they are sent in one message
    result = send(adapters, MODELS)

    # Then two versions are registered, each under its item's task id, in order
    assert versions(adapters) == [
        ("pump-1", 1, f"{TASK_ID}:0"),
        ("pump-3", 1, f"{TASK_ID}:2"),
    ]
    # and the result says, per item in order, what became of it and why
    assert (result["n_models"], result["n_succeeded"], result["n_failed"]) == (3, 2, 1)
    first, failed, third = result["models"]
    assert (first["model"], first["model_version"], first["status"]) == ("pump-1", 1, "succeeded")
    assert (third["model"], third["model_version"], third["status"]) == ("pump-3", 1, "succeeded")
    assert failed == {
        "model": "pump-2",
        "status": "failed",
        "error": "training needs at least 10 rows, got 5",
        "error_type": "invalid_records",
    }


def test_the_same_message_twice_registers_each_model_once(adapters: Adapters) -> None:
    # Given a message that was delivered and trained
    first = send(adapters, MODELS)

    # When it is delivered again under the same task id
    again = send(adapters, MODELS)

    # Then nothing new is registered and the same versions are returned
    assert [(name, version) for name, version, _ in versions(adapters)] == [
        ("pump-1", 1),
        ("pump-3", 1),
    ]
    assert again == first

    # and the same list under a new task id trains new versions
    send(adapters, MODELS, task_id="another-task")
    assert [(n, v) for n, v, _ in versions(adapters)] == [
        ("pump-1", 2),
        ("pump-1", 1),
        ("pump-3", 2),
        ("pump-3", 1),
    ]


def test_an_outage_fails_the_message_and_its_retry_trains_only_the_rest(
    adapters: Adapters, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a database that goes away after the first model is registered
    register = adapters.store.register_model
    calls: list[str] = []

    def flaky(draft: Any, *, now: Any) -> Any:
        calls.append(draft.name)
        if len(calls) == 2:
            raise sqlalchemy.exc.OperationalError("INSERT", {}, ConnectionError("db down"))
        return register(draft, now=now)

    monkeypatch.setattr(adapters.store, "register_model", flaky)
    good = [item("a"), item("b"), item("c")]

    # When the message runs: the outage escapes (the task retries the whole message)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        send(adapters, good)
    assert [(n, v) for n, v, _ in versions(adapters)] == [("a", 1)]

    # When the retry runs
    result = send(adapters, good)

    # Then "a" is returned, not trained again; "b" and "c" are registered once each
    assert calls == ["a", "b", "b", "c"]
    assert [(n, v) for n, v, _ in versions(adapters)] == [("a", 1), ("b", 1), ("c", 1)]
    assert result["n_succeeded"] == 3


def test_the_item_task_id_fits_the_column_that_records_it() -> None:
    assert ModelRow.__table__.c.training_task_id.type.length == TRAINING_TASK_ID_MAX_LENGTH  # type: ignore[attr-defined]
