"""``migrate``: the database schema, or the RabbitMQ exchanges."""

from __future__ import annotations

import click

from pynomaly_workers.cli.context import load_settings
from pynomaly_workers.cli.output import fail


@click.command()
@click.option("--revision", default="head", show_default=True)
@click.option(
    "--broker",
    is_flag=True,
    help="Instead of the database: on RabbitMQ, replace the topic exchanges an earlier "
    "release named like the queues with the direct ones producers declare. Run once no "
    "worker or client of that release runs.",
)
def migrate(revision: str, broker: bool) -> None:
    """Create or upgrade the database schema (Alembic); with --broker, the RabbitMQ
    exchanges instead."""
    if broker:
        _migrate_broker()
        return
    from sqlalchemy.engine import make_url

    from pynomaly_workers.adapters.stores.engine import normalize_url
    from pynomaly_workers.migrate import upgrade

    url = load_settings().resolved_database_url
    upgrade(url, revision=revision)
    safe = make_url(normalize_url(url)).render_as_string(hide_password=True)
    click.echo(f"database {safe} is at revision {revision}")


def _migrate_broker() -> None:
    from kombu.utils.url import maybe_sanitize_url

    from pynomaly_workers.adapters.amqp_topology import migrate_exchanges
    from pynomaly_workers.celery_app import get_app

    settings = load_settings()
    if not settings.is_amqp:
        fail("--broker migrates RabbitMQ exchanges; PYNOMALY_BROKER_URL is not amqp://")
    app = get_app()
    with app.connection_for_write() as connection:
        replaced = migrate_exchanges(connection, app.amqp.queues.values())
    where = maybe_sanitize_url(settings.broker_url)
    if replaced:
        click.echo(f"{where}: replaced with direct exchanges: {', '.join(replaced)}")
    else:
        click.echo(f"{where}: every queue's exchange is already direct; nothing to do")
