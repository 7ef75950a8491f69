"""Registry changes are announced: every statement that changes ``models``,
``model_aliases`` or ``model_thresholds`` sends ``NOTIFY pynomaly_registry`` with the
table's schema as payload. PostgreSQL delivers it when the transaction commits; worker
processes LISTEN (``adapters/stores/registry_watch.py``) and keep what a model name
resolves to until they hear of a change, instead of re-reading it every second (a
query per job when traffic is spread over many models). Statement-level triggers: one
notification per statement, and PostgreSQL folds identical ones of a transaction into
one. SQLite has no LISTEN: nothing to do there (workers re-read after the TTL).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

TABLES = ("models", "model_aliases", "model_thresholds")
FUNCTION = "pynomaly_registry_changed"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('pynomaly_registry', TG_TABLE_SCHEMA);
            RETURN NULL;
        END
        $$
        """
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_registry_changed AFTER INSERT OR UPDATE OR DELETE "
            f"OR TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_registry_changed ON {table}")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
