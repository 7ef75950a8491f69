"""Drift windows and reports on SQL."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.tables import DriftReportRow, DriftWindowRow
from pynomaly_workers.domain.drift import DriftCounts

_ADD_ATTEMPTS = 5


def _naive(moment: datetime) -> datetime:
    """A window start comparable whether the driver returned it with a zone or not."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


class SqlDriftStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.DriftStore` on SQL."""

    def add_drift_counts(
        self, counts: Mapping[tuple[int, datetime], DriftCounts], *, now: datetime
    ) -> None:
        """Add each (model version, window) count to what is stored, in one transaction.
        Windows are read for update and written back, so concurrent workers add up;
        a first insert that races another is retried."""
        for attempt in range(_ADD_ATTEMPTS):
            try:
                self._add(counts, now=now)
                return
            except IntegrityError:
                if attempt == _ADD_ATTEMPTS - 1:
                    raise

    def _add(self, counts: Mapping[tuple[int, datetime], DriftCounts], *, now: datetime) -> None:
        """One read of every window concerned (locked, in key order, so two workers
        never wait on each other in a cycle), then the changes in batched statements:
        a worker serving many models used to spend two round trips per model on every
        flush, inside a detection batch."""
        keys = sorted(counts)
        query = (
            select(DriftWindowRow)
            .where(tuple_(DriftWindowRow.model_id, DriftWindowRow.window_start).in_(keys))
            .order_by(DriftWindowRow.model_id, DriftWindowRow.window_start)
            .with_for_update()
        )
        with Session(self.engine) as session, session.begin():
            stored = {
                (row.model_id, _naive(row.window_start)): row for row in session.scalars(query)
            }
            for key in keys:
                fresh = counts[key]
                row = stored.get((key[0], _naive(key[1])))
                if row is None:
                    session.add(
                        DriftWindowRow(
                            model_id=key[0],
                            window_start=key[1],
                            counts=fresh.to_dict(),
                            updated_at=now,
                        )
                    )
                    continue
                total = DriftCounts.from_dict(row.counts)
                total.add(fresh)
                row.counts, row.updated_at = total.to_dict(), now

    def drift_windows(self, *, since: datetime) -> dict[int, list[DriftCounts]]:
        """Per model version id, the counts of every window starting at ``since`` or later."""
        query = select(DriftWindowRow).where(DriftWindowRow.window_start >= since)
        found: dict[int, list[DriftCounts]] = {}
        with Session(self.engine) as session:
            for row in session.scalars(query):
                found.setdefault(row.model_id, []).append(DriftCounts.from_dict(row.counts))
        return found

    def save_drift_report(
        self, model_id: int, report: dict[str, Any], *, drifted: bool, now: datetime
    ) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(
                DriftReportRow(model_id=model_id, checked_at=now, drifted=drifted, report=report)
            )
