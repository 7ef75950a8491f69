"""The public contract: names written once, and JSON Schemas that agree with the workers."""

from __future__ import annotations

import ast
import io
import json
import tokenize
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pynomaly_workers import contract
from pynomaly_workers.client import detection_kwargs, training_kwargs, training_many_kwargs
from pynomaly_workers.domain.errors import InvalidInput, InvalidMessage
from pynomaly_workers.domain.evaluation import parse_evaluation_request
from pynomaly_workers.domain.jobs import (
    TRAINING_TASK_ID_MAX_LENGTH,
    parse_detection_request,
    parse_training_batch,
    parse_training_item,
    parse_training_request,
    training_item_id,
)
from pynomaly_workers.domain.records import RecordLimits
from pynomaly_workers.schemas import schema_files

ROOT = Path(__file__).resolve().parents[2]
LIMITS = RecordLimits(max_records=1_000, max_features=64)
DETECT = contract.DETECT_KWARGS_SCHEMA
TRAIN = contract.TRAIN_KWARGS_SCHEMA
TRAIN_MANY = contract.TRAIN_MANY_KWARGS_SCHEMA
TASK_ID = "5f0c7a4e-2b1d-4c1e-9a57-0d6c1b1e8f3a"

# Every public name that must be written once, in workers/contract.py.
NAMES = {
    contract.DETECT_TASK,
    contract.DETECT_CHUNK_TASK,
    contract.TRAIN_TASK,
    contract.TRAIN_MANY_TASK,
    contract.EVALUATE_TASK,
    contract.EVALUATE_CHUNK_TASK,
    contract.PING_TASK,
    *contract.ALL_QUEUES,
    *contract.JOB_STATUSES,
}


def string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every plain string literal in a Python file (f-strings skipped)."""
    found = []
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    for token in tokens:
        if token.type == tokenize.STRING and token.string.lstrip("rbuRBU")[:1] in "'\"":
            value = ast.literal_eval(token.string)
            if isinstance(value, str):  # bytes are data, not names
                found.append((token.start[0], value))
    return found


# Where the same word means something else: a result key or a section, not the contract.
NOT_CONTRACT = {
    ("workers/cli/training.py", "training"),  # "training did not finish" (what was awaited)
    ("workers/demo.py", "training"),  # the demo's training file and result
    ("benchmarks/runner.py", "training"),  # the benchmark's training section
    ("benchmarks/small_jobs.py", "failed"),  # a count of failed jobs in the report
    ("workers/adapters/stores/tables.py", "notifications"),  # the table, not the queue
    ("workers/domain/notifications.py", "failed"),  # a notification's status, not a job's
}


def source_files() -> list[Path]:
    folders = ("workers", "tasks", "schedules", "benchmarks")
    files = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
    return [p for p in files if p != ROOT / "workers" / "contract.py"]


def test_public_names_are_written_only_in_the_contract_module() -> None:
    # Given every module of the runtime and the benchmarks (tests and docs may repeat them)
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for path in source_files()
        for line, value in string_literals(path)
        if (value in NAMES or value.startswith(contract.MAINTENANCE_PREFIX))
        and (str(path.relative_to(ROOT)), value) not in NOT_CONTRACT
    ]
    # Then none spells a task, queue or status itself: each imports it from the contract
    assert offenders == []


def test_the_name_check_would_catch_a_spelled_out_name(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""Docs may say pynomaly.detect."""\nQUEUE = "detection"\n')
    assert [value for _, value in string_literals(module) if value in NAMES] == ["detection"]


def test_every_task_routes_to_its_queue() -> None:
    assert contract.queue_of(contract.DETECT_TASK) == contract.DETECTION_QUEUE
    assert contract.queue_of(contract.DETECT_CHUNK_TASK) == contract.BULK_QUEUE
    assert contract.queue_of(contract.TRAIN_TASK) == contract.TRAINING_QUEUE
    assert contract.queue_of(contract.TRAIN_MANY_TASK) == contract.TRAINING_QUEUE
    assert contract.queue_of(contract.EVALUATE_TASK) == contract.BULK_QUEUE
    assert contract.queue_of(contract.EVALUATE_CHUNK_TASK) == contract.BULK_QUEUE
    assert contract.queue_of(contract.maintenance_task("retention")) == "maintenance"


def test_statuses_split_into_open_and_final() -> None:
    assert set(contract.OPEN_STATUSES) | set(contract.FINAL_STATUSES) == set(contract.JOB_STATUSES)
    assert not set(contract.OPEN_STATUSES) & set(contract.FINAL_STATUSES)


def test_schema_files_are_generated_from_the_contract() -> None:
    # The published files are what `make schemas` writes from workers/contract.py
    for path, text in schema_files().items():
        assert path.read_text() == text, f"{path.name} is stale: run 'make schemas'"


def test_every_public_task_has_a_schema_file() -> None:
    names = {path.name for path in schema_files()}
    assert "pynomaly.train_many.kwargs.json" in names
    assert all(path.exists() for path in schema_files())


@pytest.mark.parametrize(
    "schema", [DETECT, TRAIN, TRAIN_MANY], ids=["detect", "train", "train_many"]
)
def test_schemas_are_valid_json_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)


# What the README shows upstream services sending, and what the Python client sends.
README_DETECT = [
    {"job_id": "order-42", "model": "sensors", "records": [[0.1, 0.2, 0.3], [9.0, 9.0, 9.0]]},
    {
        "model": "sensors@3",
        "records": [[0.1, 0.2, 0.3], [9.0, 9.0, 9.0]],
        "record_ids": ["a", "b"],
        "timestamps": ["2026-11-27T10:00:00Z", 1795750000],
        "job_id": "order-42",
    },
    {"model": "sensors", "dataset": "sensors"},
    {"model": "sensors", "source": "/shared/incoming.csv"},
]
README_TRAIN = [
    {"model": "sensors", "algorithm": "iforest", "dataset": "sensors"},
    {"model": "sensors", "algorithm": "lof", "records": [[1.0, 2.0]] * 20, "params": {"k": 5}},
]


@pytest.mark.parametrize("kwargs", README_DETECT)
def test_detect_schema_accepts_the_readme_examples_and_the_workers_agree(
    kwargs: dict[str, Any],
) -> None:
    jsonschema.validate(kwargs, DETECT)
    parse_detection_request(kwargs, default_job_id="task-1", limits=LIMITS)


@pytest.mark.parametrize("kwargs", README_TRAIN)
def test_train_schema_accepts_the_readme_examples_and_the_workers_agree(
    kwargs: dict[str, Any],
) -> None:
    jsonschema.validate(kwargs, TRAIN)
    parse_training_request(kwargs, limits=LIMITS)


def test_what_the_python_client_sends_matches_the_schemas() -> None:
    jsonschema.validate(
        detection_kwargs(
            model="m", records=[[1, 2]], record_ids=["a"], timestamps=[0], job_id="j-1"
        ),
        DETECT,
    )
    jsonschema.validate(detection_kwargs(model="m", source="/data/x.csv", job_id="j-2"), DETECT)
    jsonschema.validate(training_kwargs(model="m", records=[[1.0]] * 10), TRAIN)
    jsonschema.validate(training_kwargs(model="m", dataset="ds", algorithm="ocsvm"), TRAIN)
    jsonschema.validate(
        training_many_kwargs(
            [
                training_kwargs(model="a", records=[[1.0]] * 10),
                training_kwargs(model="b", dataset="d"),
            ]
        ),
        TRAIN_MANY,
    )


BAD_DETECT = [
    pytest.param({"records": [[1.0]]}, id="no-model"),
    pytest.param({"model": "m"}, id="no-input"),
    pytest.param({"model": "m", "records": [[1.0]], "source": "/x.csv"}, id="two-inputs"),
    pytest.param({"model": "m", "records": [[1.0]], "colour": "red"}, id="unknown-key"),
    pytest.param({"model": "m", "records": [[1.0]], "job_id": "bad id!"}, id="bad-job-id"),
    pytest.param({"model": "m@0", "records": [[1.0]]}, id="bad-version"),
    pytest.param({"model": "m@-x", "records": [[1.0]]}, id="bad-alias"),
    pytest.param({"model": "m", "records": [["a"]]}, id="non-numeric"),
    pytest.param({"model": "m", "records": []}, id="empty"),
    pytest.param({"model": "m", "dataset": "no spaces allowed"}, id="bad-dataset-name"),
]


@pytest.mark.parametrize("kwargs", BAD_DETECT)
def test_detect_schema_rejects_what_the_workers_reject(kwargs: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(kwargs, DETECT)
    with pytest.raises(InvalidInput):
        parse_detection_request(kwargs, default_job_id="task-1", limits=LIMITS)


BAD_TRAIN = [
    pytest.param({"records": [[1.0]] * 20}, id="no-model"),
    pytest.param({"model": "m", "records": [[1.0]] * 20, "algorithm": "kmeans"}, id="algorithm"),
    pytest.param({"model": "m", "records": [[1.0]] * 20, "contamination": 0.7}, id="contamination"),
    pytest.param({"model": "m", "records": [[1.0]] * 20, "params": [1]}, id="params"),
    pytest.param({"model": "m"}, id="no-input"),
]


@pytest.mark.parametrize("kwargs", BAD_TRAIN)
def test_train_schema_rejects_what_the_workers_reject(kwargs: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(kwargs, TRAIN)
    with pytest.raises(InvalidInput):
        parse_training_request(kwargs, limits=LIMITS)


def test_schema_properties_are_the_keys_the_workers_accept() -> None:
    assert contract.kwargs_keys(contract.DETECT_TASK) == set(
        json.loads(json.dumps(DETECT))["properties"]
    )
    assert "job_id" not in contract.kwargs_keys(contract.TRAIN_TASK)


# -- pynomaly.train_many --------------------------------------------------------------
README_TRAIN_MANY = [
    {"models": README_TRAIN},
    {"models": [{"model": "pump-7", "dataset": "pump-7"}]},
]


@pytest.mark.parametrize("kwargs", README_TRAIN_MANY)
def test_train_many_schema_accepts_the_readme_examples_and_the_workers_agree(
    kwargs: dict[str, Any],
) -> None:
    jsonschema.validate(kwargs, TRAIN_MANY)
    items = parse_training_batch(kwargs, task_id=TASK_ID, max_models=10)
    requests = [parse_training_item(item, index=i, limits=LIMITS) for i, item in enumerate(items)]
    assert [r.model for r in requests] == [item["model"] for item in kwargs["models"]]


BAD_TRAIN_MANY = [
    pytest.param({}, id="no-models"),
    pytest.param({"models": []}, id="empty"),
    pytest.param({"models": {"model": "m", "dataset": "d"}}, id="not-a-list"),
    pytest.param({"models": [{"model": "m", "dataset": "d"}], "colour": "red"}, id="unknown-key"),
]


@pytest.mark.parametrize("kwargs", BAD_TRAIN_MANY)
def test_train_many_schema_rejects_the_messages_the_workers_refuse_whole(
    kwargs: dict[str, Any],
) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(kwargs, TRAIN_MANY)
    with pytest.raises(InvalidInput):
        parse_training_batch(kwargs, task_id=TASK_ID, max_models=10)


@pytest.mark.parametrize("item", [*(p.values[0] for p in BAD_TRAIN), "not an object"])
def test_a_bad_item_is_refused_by_the_schema_and_fails_alone_in_the_workers(item: Any) -> None:
    # Given a message whose second item the workers cannot train
    kwargs = {"models": [README_TRAIN[0], item, README_TRAIN[1]]}

    # Then the schema refuses the message, but the workers keep it and fail that item only
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(kwargs, TRAIN_MANY)
    items = parse_training_batch(kwargs, task_id=TASK_ID, max_models=10)
    assert len(items) == 3
    parse_training_item(items[0], index=0, limits=LIMITS)
    with pytest.raises(InvalidInput, match=r"models\[1\]" if isinstance(item, str) else None):
        parse_training_item(items[1], index=1, limits=LIMITS)


def test_more_models_than_the_setting_allows_are_refused_with_what_to_do() -> None:
    kwargs = {"models": [README_TRAIN[0]] * 4}
    assert len(parse_training_batch(kwargs, task_id=TASK_ID, max_models=4)) == 4
    with pytest.raises(
        InvalidInput, match=r"at most 3 per message.*PYNOMALY_TRAIN_MANY_MAX_MODELS"
    ):
        parse_training_batch(kwargs, task_id=TASK_ID, max_models=3)


def test_item_task_ids_are_deterministic_distinct_and_fit_the_column() -> None:
    ids = [training_item_id(TASK_ID, i) for i in range(1_000)]
    assert ids[:2] == [f"{TASK_ID}:0", f"{TASK_ID}:1"]
    assert len(set(ids)) == 1_000
    assert max(map(len, ids)) <= TRAINING_TASK_ID_MAX_LENGTH


def test_a_task_id_too_long_to_key_every_item_is_refused() -> None:
    kwargs = {"models": [README_TRAIN[0]] * 12}
    fits = "t" * (TRAINING_TASK_ID_MAX_LENGTH - 3)  # ":11"
    assert len(parse_training_batch(kwargs, task_id=fits, max_models=100)) == 12
    with pytest.raises(InvalidInput, match=r"too long.*at most 252 characters"):
        parse_training_batch(kwargs, task_id=fits + "t", max_models=100)


# -- pynomaly.evaluate -----------------------------------------------------------------
EVALUATE_SENT = {
    "job_id": "eval-1",
    "model": "wbc@champion",
    "dataset": "wbc-test",
    "purpose": "promotion",
    "actor": "ada",
}


def test_evaluate_schema_is_valid_and_the_workers_agree_with_it() -> None:
    jsonschema.Draft202012Validator.check_schema(contract.EVALUATE_KWARGS_SCHEMA)
    jsonschema.validate(EVALUATE_SENT, contract.EVALUATE_KWARGS_SCHEMA)
    assert parse_evaluation_request(EVALUATE_SENT).purpose == "promotion"
    refused = {**EVALUATE_SENT, "purpose": "curiosity"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(refused, contract.EVALUATE_KWARGS_SCHEMA)
    with pytest.raises(InvalidMessage):
        parse_evaluation_request(refused)
    assert contract.kwargs_keys(contract.EVALUATE_TASK) == set(EVALUATE_SENT)
