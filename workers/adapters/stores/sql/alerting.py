"""What Alertmanager was told about each incident, on SQL (``incidents.alert_*``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.tables import IncidentRow
from pynomaly_workers.domain.alerting import AlertedIncident
from pynomaly_workers.domain.incidents import LIVE_STATUSES, IncidentStatus

RESOLVED: Final[IncidentStatus] = "resolved"


def _alerted(row: IncidentRow) -> AlertedIncident:
    weights: dict[str, Any] = row.feature_weights or {}
    return AlertedIncident(
        id=row.id,
        model_name=row.model_name,
        model_version=row.model_version,
        entity=row.entity,
        status=cast(IncidentStatus, row.status),
        first_ts=row.first_ts,
        last_ts=row.last_ts,
        anomaly_count=row.anomaly_count,
        max_severity=row.max_severity,
        feature_weights={str(k): float(v) for k, v in weights.items()},
        opened_at=row.opened_at,
        resolved_at=row.resolved_at,
        alert_severity=row.alert_severity,
    )


class SqlAlertingStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.AlertingStore` on SQL."""

    def incidents_to_alert(self, *, resend_before: datetime, limit: int) -> list[AlertedIncident]:
        """Resolved incidents whose alert is still up first (found through the partial
        index ``idx_incidents_alert_pending``), then live ones due, oldest id first."""
        row = IncidentRow
        to_end = (
            select(row)
            .where(
                row.status == RESOLVED,
                row.alert_sent_at.is_not(None),
                row.alert_ended_at.is_(None),
            )
            .order_by(row.id)
            .limit(limit)
        )
        with Session(self.engine) as session:
            found = list(session.scalars(to_end))
            if len(found) < limit:
                due = (
                    select(row)
                    .where(
                        row.status.in_(LIVE_STATUSES),
                        or_(
                            row.alert_sent_at.is_(None),
                            row.alert_sent_at < resend_before,
                            row.updated_at > row.alert_sent_at,
                        ),
                    )
                    .order_by(row.id)
                    .limit(limit - len(found))
                )
                found.extend(session.scalars(due))
            return [_alerted(r) for r in found]

    def mark_alerts_sent(self, sent: Mapping[int, str], *, at: datetime) -> None:
        """One UPDATE per severity band (at most four)."""
        by_band: dict[str, list[int]] = {}
        for incident_id, band in sent.items():
            by_band.setdefault(band, []).append(incident_id)
        with self.engine.begin() as conn:
            for band, ids in sorted(by_band.items()):
                conn.execute(
                    update(IncidentRow)
                    .where(IncidentRow.id.in_(sorted(ids)))
                    .values(alert_sent_at=at, alert_ended_at=None, alert_severity=band)
                )

    def mark_alerts_ended(self, ids: Sequence[int], *, at: datetime) -> None:
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(IncidentRow).where(IncidentRow.id.in_(sorted(ids))).values(alert_ended_at=at)
            )
