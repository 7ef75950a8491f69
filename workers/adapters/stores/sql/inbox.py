"""The incident inbox: settled jobs whose anomalies incident upkeep has yet to fold.

A job enters it in the transaction that settles it (only a transition to ``succeeded``
does, so a redelivered or resent job never enters twice) and leaves it in the
transaction that folds it (``SqlIncidentStore.fold_inbox``): each job's anomalies are
counted into incidents exactly once, and detection only ever writes one small row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from pynomaly_workers.adapters.stores.tables import IncidentInboxRow


def queue_for_incidents(conn: Connection, job_ids: Sequence[str], *, now: datetime) -> None:
    """Put the jobs in the inbox, inside the caller's transaction."""
    if not job_ids:
        return
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(
        dialect_insert(IncidentInboxRow).on_conflict_do_nothing(index_elements=["job_id"]),
        [{"job_id": job_id, "queued_at": now} for job_id in job_ids],
    )
