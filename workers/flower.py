"""Flower, started in-process with options Flower's command line cannot carry.

Flower's ``--basic-auth`` (and ``FLOWER_BASIC_AUTH``) split their value on commas, so a
password with a comma never matches. The credentials are set on Flower's options as a
one-element list instead. Flower also keeps up to 100,000 tasks in memory and never
forgets an offline worker by default; both are bounded here.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from celery import Celery

from pynomaly_workers.settings import Settings

log = logging.getLogger(__name__)


def flower_arguments(settings: Settings, *, port: int, address: str) -> list[str]:
    """Flower's command-line options (everything but the credentials)."""
    arguments = [
        f"--port={port}",
        f"--address={address}",
        f"--max_tasks={settings.flower_max_tasks}",
        f"--purge_offline_workers={settings.flower_purge_offline_seconds}",
    ]
    if settings.is_amqp and settings.flower_broker_api:
        arguments.append(f"--broker_api={settings.flower_broker_api}")
    elif settings.is_amqp:
        log.warning(
            "Flower's Broker page needs RabbitMQ's management API: enable it "
            "(rabbitmq-plugins enable rabbitmq_management) and set "
            "PYNOMALY_FLOWER_BROKER_API=http://user:password@host:15672/api/"
        )
    return arguments


def run_flower(app: Celery, settings: Settings, *, port: int, address: str) -> None:
    """Serve Flower for ``app`` until SIGTERM/SIGINT."""
    from flower import command as flower_command
    from flower.app import Flower
    from flower.urls import settings as flower_settings
    from tornado.options import options

    flower_command.apply_options("flower", flower_arguments(settings, port=port, address=address))
    options.basic_auth = [settings.flower_basic_auth]
    flower_command.extract_settings()
    flower_command.setup_logging()
    from pynomaly_workers.observability import configure_process_logging

    configure_process_logging(settings)
    server = Flower(capp=app, options=options, **flower_settings)
    signal.signal(signal.SIGTERM, _exit)
    bound = server.start_http_server()
    with app.connection() as connection:
        log.info("Flower on http://%s:%s, broker %s", address, bound, connection.as_uri())
    try:
        server.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()


def _exit(signum: int, _frame: Any) -> None:
    log.info("signal %d: stopping Flower", signum)
    sys.exit(0)
