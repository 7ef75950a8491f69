"""The Celery configuration derived from the settings: transports, TLS, queues and
publisher confirms per broker URL; which finished work gives its memory back."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from celery.utils.quorum_queues import detect_quorum_queues
from celery_batches import SimpleRequest
from kombu import Connection
from pydantic import ValidationError

from pynomaly_workers.adapters.amqp_topology import ROUTING_EXCHANGE, ContractQueue
from pynomaly_workers.adapters.broker import TRANSPORT, Channel
from pynomaly_workers.adapters.queues import AmqpQueueDepth, RedisQueueDepth, queue_depth
from pynomaly_workers.celery_app import celery_config, was_large
from pynomaly_workers.client import client_app, close_app
from pynomaly_workers.contract import (
    ALL_QUEUES,
    BULK_QUEUE,
    DETECT_CHUNK_TASK,
    DETECT_TASK,
    TRAIN_TASK,
)
from pynomaly_workers.flower import flower_arguments
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.detection import forward_message


def broker_connection(settings: Settings) -> Connection:
    """The connection Celery would open for ``settings`` (not connected yet)."""
    config = celery_config(settings)
    return Connection(
        config["broker_url"], transport=config["broker_transport"], ssl=config["broker_use_ssl"]
    )


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_both_redis_schemes_use_the_hardened_transport(
    make_settings: Callable[..., Settings], scheme: str
) -> None:
    connection = broker_connection(make_settings(broker_url=f"{scheme}://127.0.0.1:6390/0"))

    # installed under kombu's own alias, so Flower still sees a Redis broker
    assert connection.transport_cls == scheme
    transport = type(connection.transport)
    assert f"{transport.__module__}:{transport.__name__}" == TRANSPORT
    assert connection.transport.Channel is Channel  # type: ignore[attr-defined]


def test_rediss_verifies_the_server_certificate_by_default(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(broker_url="rediss://:secret@127.0.0.1:6390/0")

    connection = broker_connection(settings)

    assert connection.ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert celery_config(settings)["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_rediss_url_parameters_override_the_tls_default(
    make_settings: Callable[..., Settings],
) -> None:
    url = "rediss://127.0.0.1:6390/0?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem"

    connection = broker_connection(make_settings(broker_url=url))

    assert connection.ssl == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/etc/ca.pem"}


def test_plain_redis_has_no_tls(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(broker_url="redis://127.0.0.1:6390/0")

    assert not broker_connection(settings).ssl
    assert celery_config(settings)["redis_backend_use_ssl"] is None


# -- RabbitMQ ----------------------------------------------------------------------------
AMQP_URL = "amqp://user:secret@rabbit.example:5672/pynomaly"
RESULTS_URL = "redis://redis.example:6379/1"


@pytest.fixture
def amqp_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(broker_url=AMQP_URL, result_backend=RESULTS_URL)


def test_amqp_declares_each_contract_queue_as_a_durable_quorum_queue(
    amqp_settings: Settings,
) -> None:
    queues = {q.name: q for q in celery_config(amqp_settings)["task_queues"]}

    assert set(queues) == set(ALL_QUEUES)
    for name, queue in queues.items():
        assert queue.durable
        assert not queue.auto_delete
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        # routed by the workers through their topic exchange (native delayed delivery
        # cannot route through a direct one), bound by the queue's name: a job is never
        # copied to another queue; declaring it also declares the direct exchange of its
        # name, as a producer with Celery's defaults does (tests/integration)
        assert isinstance(queue, ContractQueue)
        assert (queue.exchange.name, queue.exchange.type) == (ROUTING_EXCHANGE, "topic")
        assert queue.routing_key == name


def test_celery_sees_the_quorum_queues_so_prefetch_is_per_consumer(
    amqp_settings: Settings,
) -> None:
    app = client_app(amqp_settings)
    try:
        # what the worker's Tasks bootstep asks before it sets a global QoS, and what
        # includes the DelayedDelivery bootstep
        assert detect_quorum_queues(app, "amqp") == (True, "detection")
        assert app.conf.worker_detect_quorum_queues is True
        assert app.conf.task_acks_late is True
        assert app.conf.task_reject_on_worker_lost is True
        assert app.conf.task_default_exchange_type == "topic"
    finally:
        close_app(app)


class RecordingProducer:
    """Stands in for kombu's producer: keeps what it was asked to publish."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def publish(self, body: Any, **options: Any) -> None:
        self.published.append({"body": body, **options})


@pytest.mark.parametrize(("amqp", "priority"), [(True, 9), (False, 0)])
def test_a_forwarded_bulk_job_takes_the_brokers_priority_order(amqp: bool, priority: int) -> None:
    producer = RecordingProducer()

    @contextmanager
    def producer_or_acquire() -> Iterator[RecordingProducer]:
        yield producer

    app = SimpleNamespace(producer_or_acquire=producer_or_acquire)
    message = SimpleNamespace(
        body=b"[]", headers={"task": DETECT_TASK}, properties={}, content_type="application/json",
        content_encoding="utf-8",
    )  # fmt: skip

    # (the task passes Settings.is_amqp, amqps:// included)
    forward_message(app, message, amqp=amqp)  # type: ignore[arg-type]

    [published] = producer.published
    assert (published["routing_key"], published["priority"]) == (BULK_QUEUE, priority)


def test_amqp_publishes_with_confirms_on_kombus_own_transport(amqp_settings: Settings) -> None:
    config = celery_config(amqp_settings)

    assert config["broker_transport_options"] == {"confirm_publish": True}
    assert "visibility_timeout" not in config["broker_transport_options"]
    assert broker_connection(amqp_settings).transport_cls == "amqp"
    assert config["result_backend"] == RESULTS_URL


def test_redis_keeps_classic_lists_and_direct_exchanges(
    make_settings: Callable[..., Settings],
) -> None:
    config = celery_config(make_settings(broker_url="redis://127.0.0.1:6390/0"))

    assert {q.exchange.type for q in config["task_queues"]} == {"direct"}
    assert {str(q.queue_arguments) for q in config["task_queues"]} == {"None"}
    assert "confirm_publish" not in config["broker_transport_options"]


def test_amqp_without_a_result_backend_says_what_to_set(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValidationError, match="set PYNOMALY_RESULT_BACKEND to a Redis URL"):
        make_settings(broker_url=AMQP_URL)


def test_the_rpc_result_backend_is_refused(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValidationError, match=r"rpc:// cannot hold fanned-out job summaries"):
        make_settings(broker_url=AMQP_URL, result_backend="rpc://")


def test_beat_takes_its_lock_in_the_redis_result_backend_beside_rabbitmq(
    amqp_settings: Settings, make_settings: Callable[..., Settings]
) -> None:
    assert amqp_settings.resolved_beat_redis_url == RESULTS_URL
    sqlite_results = make_settings(broker_url=AMQP_URL, result_backend="db+sqlite:///r.db")
    assert sqlite_results.resolved_beat_redis_url == ""


@pytest.mark.parametrize(
    ("broker_url", "reader"),
    [(AMQP_URL, AmqpQueueDepth), ("redis://127.0.0.1:6390/0", RedisQueueDepth)],
)
def test_queue_lengths_are_read_from_either_broker(
    make_settings: Callable[..., Settings], broker_url: str, reader: type
) -> None:
    depth = queue_depth(make_settings(broker_url=broker_url, result_backend=RESULTS_URL))
    try:
        assert isinstance(depth, reader)
    finally:
        depth.close()


def test_the_embedded_broker_has_no_queue_lengths_to_read(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValueError, match="Redis or RabbitMQ only, not filesystem"):
        queue_depth(make_settings())


def test_flower_gets_rabbitmqs_management_api_for_its_broker_page(
    amqp_settings: Settings, make_settings: Callable[..., Settings]
) -> None:
    api = "http://user:secret@rabbit.example:15672/api/"
    with_api = make_settings(broker_url=AMQP_URL, result_backend=RESULTS_URL, flower_broker_api=api)

    assert f"--broker_api={api}" in flower_arguments(with_api, port=5555, address="0.0.0.0")
    without = flower_arguments(amqp_settings, port=5555, address="0.0.0.0")
    assert not any(a.startswith("--broker_api") for a in without)


def test_the_visibility_timeout_defaults_to_twice_the_time_limit_plus_a_minute(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        broker_url="redis://h:6379/0", task_soft_time_limit=90, task_time_limit=100
    )
    assert celery_config(settings)["broker_transport_options"]["visibility_timeout"] == 260


def test_a_visibility_timeout_set_explicitly_reaches_the_transport(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        broker_url="redis://h:6379/0",
        task_soft_time_limit=10,
        task_time_limit=12,
        visibility_timeout_seconds=20,
    )
    assert celery_config(settings)["broker_transport_options"]["visibility_timeout"] == 20


def test_a_visibility_timeout_within_the_time_limit_is_refused(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValueError, match="PYNOMALY_VISIBILITY_TIMEOUT_SECONDS must be greater"):
        make_settings(task_soft_time_limit=20, task_time_limit=30, visibility_timeout_seconds=30)


def request(**kwargs: Any) -> SimpleRequest:
    """A batched ``pynomaly.detect`` request with these kwargs."""
    return SimpleRequest("id", DETECT_TASK, (), kwargs, {}, "host", False, None, None, {})


@pytest.mark.parametrize(
    ("task_name", "args", "large"),
    [
        pytest.param(DETECT_CHUNK_TASK, (), True, id="a-chunk"),
        pytest.param(TRAIN_TASK, (), True, id="a-training"),
        pytest.param(
            DETECT_TASK,
            ([request(records=[[1.0]]), request(source="/data/x.csv")],),
            True,
            id="a-batch-with-a-source-job",
        ),
        pytest.param(DETECT_TASK, ([request(dataset="readings")],), True, id="a-dataset-job"),
        pytest.param(
            DETECT_TASK, ([request(records=[[1.0]])] * 3,), False, id="a-batch-of-small-jobs"
        ),
        pytest.param(DETECT_TASK, None, False, id="a-batch-without-args"),
        pytest.param("pynomaly.health.ping", (), False, id="another-task"),
    ],
)
def test_memory_is_given_back_after_large_work_only(task_name: str, args: Any, large: bool) -> None:
    # Given a task that finished with these arguments, then it counts as large or not
    assert was_large(task_name, args) is large
