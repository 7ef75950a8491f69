"""The Celery configuration derived from the settings: transports and TLS per broker URL."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
from kombu import Connection

from pynomaly_workers.adapters.broker import TRANSPORT, Channel
from pynomaly_workers.celery_app import celery_config
from pynomaly_workers.settings import Settings


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
