"""Alembic environment: the URL comes from the caller (``pynomaly-workers migrate``)."""

from __future__ import annotations

from alembic import context

from pynomaly_workers.adapters.stores.engine import build_engine
from pynomaly_workers.adapters.stores.tables import Base
from pynomaly_workers.settings import get_settings

config = context.config
url = config.attributes.get("url") or get_settings().resolved_database_url
engine = build_engine(url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
