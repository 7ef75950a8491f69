"""Drift windows and reports on SQL."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.tables import DriftReportRow, DriftWindowRow
from pynomaly_workers.domain.drift import DriftCounts

_ADD_ATTEMPTS = 5


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
        with Session(self.engine) as session, session.begin():
            for (model_id, window_start), fresh in sorted(counts.items()):
                row = session.get(DriftWindowRow, (model_id, window_start), with_for_update=True)
                if row is None:
                    session.add(
                        DriftWindowRow(
                            model_id=model_id,
                            window_start=window_start,
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
