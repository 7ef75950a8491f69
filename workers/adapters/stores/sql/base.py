"""What every SQL store role shares: the engine and dialect-aware inserts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.dialects import postgresql, sqlite


class SqlBase:
    """An engine, and inserts that know ON CONFLICT on PostgreSQL and SQLite."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def _insert(self, table: Any) -> Any:
        """A dialect insert that knows ON CONFLICT (PostgreSQL and SQLite both do)."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        if self.dialect == "sqlite":
            return sqlite.insert(table)
        return insert(table)
