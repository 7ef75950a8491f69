"""Incidents on SQL: folding the inbox, resolving idle incidents, triage and labels.

Every change of incidents runs in one transaction that also writes its history
(``incident_events``) and the notifications it calls for (an outbox: they are sent after
commit, so a rolled-back fold notifies nobody). On PostgreSQL those transactions take
one advisory lock, so two folds never read the same incident at once; on SQLite the
inbox claim (a DELETE, the transaction's first statement) takes the database's write
lock first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.sql.notifications import (
    enabled_subscriptions,
    queue_notifications,
)
from pynomaly_workers.adapters.stores.sql.rows import anomaly_record
from pynomaly_workers.adapters.stores.tables import (
    AnomalyLabelRow,
    AnomalyRow,
    IncidentEventRow,
    IncidentInboxRow,
    IncidentRow,
    ModelRow,
    UtcDateTime,
)
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.incidents import (
    LIVE_STATUSES,
    AnomalyPoint,
    Change,
    Incident,
    IncidentStatus,
    Label,
    fold,
    severity_band,
)
from pynomaly_workers.domain.notifications import Subscription
from pynomaly_workers.domain.ports import (
    FoldReport,
    IncidentDetail,
    IncidentEventRecord,
    IncidentRecord,
    LabelRecord,
)

# pg_advisory_xact_lock key of incident upkeep ("pynomaly incidents").
_LOCK_KEY = 0x5059_4E49_4E43
NotifyKind = Literal["opened", "grew", "resolved"]
SYSTEM = "pynomaly"


class UnknownIncident(InvalidInput):
    """No incident has that id."""


class UnknownAnomaly(InvalidInput):
    """No anomaly has that id."""


INCIDENTS = cast(Table, IncidentRow.__table__)


@dataclass
class _Tx:
    """What one transaction did: notifications to dispatch after commit, and whether
    incidents opened or resolved (Alertmanager wants to hear at once)."""

    notifications: list[int] = field(default_factory=list)
    # The enabled subscriptions, read once per transaction (upkeep holds the fold lock).
    subscriptions: list[Subscription] | None = None
    opened: int = 0
    grown: int = 0
    resolved: int = 0


class SqlIncidentStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.IncidentStore` on SQL."""

    def _notify(
        self,
        conn: Connection,
        *,
        incident_id: int,
        kind: NotifyKind,
        before_max: float | None,
        after_max: float,
        now: datetime,
        tx: _Tx,
        model_name: str | None = None,
    ) -> list[int]:
        """Queue the notifications an incident event calls for, inside the caller's
        transaction (an outbox: sent once it commits); return their ids."""
        if tx.subscriptions is None:
            tx.subscriptions = enabled_subscriptions(conn)
        return queue_notifications(
            conn,
            incident_id=incident_id,
            kind=kind,
            before_max=before_max,
            after_max=after_max,
            now=now,
            subscriptions=tx.subscriptions,
            model_name=model_name,
        )

    def _lock(self, conn: Connection) -> None:
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})

    # -- folding ------------------------------------------------------------------------
    def fold_inbox(self, *, gap: timedelta, now: datetime, limit: int = 500) -> FoldReport:
        with self.engine.begin() as conn:
            self._lock(conn)
            pending = select(IncidentInboxRow.job_id).order_by(IncidentInboxRow.queued_at)
            claimed = list(
                conn.execute(
                    delete(IncidentInboxRow)
                    .where(IncidentInboxRow.job_id.in_(pending.limit(limit).scalar_subquery()))
                    .returning(IncidentInboxRow.job_id)
                ).scalars()
            )
            tx = _Tx()
            points = self._points(conn, claimed) if claimed else []
            by_key: dict[tuple[int, str | None], list[AnomalyPoint]] = defaultdict(list)
            for point in points:
                by_key[(point.model_id, point.entity)].append(point)
            models = self._model_names(conn, {model_id for model_id, _ in by_key})
            nearby = self._nearby(conn, by_key, gap=gap)
            changes = [
                (change, models[model_id])
                for (model_id, entity), key_points in sorted(
                    by_key.items(), key=lambda item: (item[0][0], item[0][1] or "")
                )
                for change in fold(nearby.get((model_id, entity), []), key_points, gap=gap).changes
            ]
            self._update_many(conn, [change for change, _ in changes], now=now)
            for change, model in changes:
                self._apply(conn, change, model=model, now=now, tx=tx)
            more = conn.execute(select(IncidentInboxRow.job_id).limit(1)).first() is not None
        return FoldReport(
            jobs=len(claimed),
            anomalies=len(points),
            opened=tx.opened,
            grown=tx.grown,
            resolved=tx.resolved,
            notifications=tx.notifications,
            more=more,
        )

    def _points(self, conn: Connection, job_ids: list[str]) -> list[AnomalyPoint]:
        rows = conn.execute(
            select(
                AnomalyRow.model_id,
                AnomalyRow.entity,
                AnomalyRow.timestamp,
                AnomalyRow.severity,
                AnomalyRow.explanation,
            ).where(AnomalyRow.job_id.in_(job_ids), AnomalyRow.suppressed_by.is_(None))
        )
        return [
            AnomalyPoint(model_id, entity, timestamp, severity, explanation)
            for model_id, entity, timestamp, severity, explanation in rows
        ]

    @staticmethod
    def _model_names(conn: Connection, model_ids: set[int]) -> dict[int, tuple[str, int]]:
        rows = conn.execute(
            select(ModelRow.id, ModelRow.name, ModelRow.version).where(ModelRow.id.in_(model_ids))
        )
        return {row.id: (row.name, row.version) for row in rows}

    @staticmethod
    def _nearby(
        conn: Connection,
        by_key: dict[tuple[int, str | None], list[AnomalyPoint]],
        *,
        gap: timedelta,
    ) -> dict[tuple[int, str | None], list[Incident]]:
        """The incidents within the gap of each key's new anomalies: one query per model
        (its keys' entities, the span of all their points), then narrowed per key."""
        spans = {
            key: (min(p.timestamp for p in points), max(p.timestamp for p in points))
            for key, points in by_key.items()
        }
        found: dict[tuple[int, str | None], list[Incident]] = defaultdict(list)
        for model_id in sorted({model_id for model_id, _ in spans}):
            keys = [key for key in spans if key[0] == model_id]
            entities = sorted({entity for _, entity in keys if entity is not None})
            lo = min(spans[key][0] for key in keys)
            hi = max(spans[key][1] for key in keys)
            same: list[ColumnElement[bool]] = []
            if entities:
                same.append(IncidentRow.entity.in_(entities))
            if any(entity is None for _, entity in keys):
                same.append(IncidentRow.entity.is_(None))
            rows = conn.execute(
                select(IncidentRow).where(
                    IncidentRow.model_id == model_id,
                    or_(*same),
                    IncidentRow.last_ts >= lo - gap,
                    IncidentRow.first_ts <= hi + gap,
                )
            ).all()
            for row in rows:
                key = (model_id, row.entity)
                if key not in spans:
                    continue
                first, last = spans[key]
                if row.last_ts >= first - gap and row.first_ts <= last + gap:
                    found[key].append(_incident(row))
        return found

    @staticmethod
    def _values(change: Change, *, now: datetime) -> dict[str, Any]:
        """The columns a change sets on its incident's row."""
        incident = change.incident
        values: dict[str, Any] = {
            "first_ts": incident.first_ts,
            "last_ts": incident.last_ts,
            "anomaly_count": incident.anomaly_count,
            "max_severity": incident.max_severity,
            "feature_weights": dict(incident.feature_weights),
            "updated_at": now,
        }
        if change.added:
            values["last_seen_at"] = now
        if change.before is not None and change.merged_into is not None:
            values |= {"status": "resolved", "resolved_at": now, "resolved_by": SYSTEM}
        return values

    @staticmethod
    def _update_many(conn: Connection, changes: Sequence[Change], *, now: datetime) -> None:
        """Write the changed existing incidents: one statement per set of columns, run
        for all of them at once (an UPDATE each cost a round trip per incident)."""
        table = INCIDENTS
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for change in changes:
            if change.before is None:
                continue
            assert change.incident.id is not None
            values = SqlIncidentStore._values(change, now=now)
            groups[tuple(sorted(values))].append(
                {"_id": change.incident.id} | {f"v_{k}": v for k, v in values.items()}
            )
        for columns, rows in groups.items():
            statement = (
                update(table)
                .where(table.c.id == bindparam("_id"))
                .values({k: bindparam(f"v_{k}", type_=table.c[k].type) for k in columns})
            )
            conn.execute(statement, rows)

    def _apply(
        self, conn: Connection, change: Change, *, model: tuple[str, int], now: datetime, tx: _Tx
    ) -> None:
        """Insert a new incident, or follow up a changed one (its row is written by
        :meth:`_update_many`): events, resolution of a merged one, notifications."""
        incident = change.incident
        if change.before is None:
            values = self._values(change, now=now)
            incident_id = conn.execute(
                insert(IncidentRow)
                .values(
                    model_id=incident.model_id,
                    model_name=model[0],
                    model_version=model[1],
                    entity=incident.entity,
                    status="open",
                    opened_at=now,
                    **values,
                )
                .returning(IncidentRow.id)
            ).scalar_one()
            self._event(conn, incident_id, "opened", detail=_figures(incident), now=now)
            tx.opened += 1
            tx.notifications += self._notify(
                conn,
                incident_id=incident_id,
                kind="opened",
                before_max=None,
                after_max=incident.max_severity,
                now=now,
                tx=tx,
                model_name=model[0],
            )
            return
        assert incident.id is not None
        if change.merged_into is not None:
            self._resolved(
                conn,
                incident.id,
                change.before.max_severity,
                now,
                tx=tx,
                detail={"merged_into": change.merged_into},
                comment="merged: new anomalies bridged it with another incident",
            )
            return
        tx.grown += 1
        if change.escalated:
            detail = {
                "from": severity_band(change.before.max_severity),
                "to": severity_band(incident.max_severity),
            } | _figures(incident)
            self._event(conn, incident.id, "escalated", detail=detail, now=now)
        if incident.live and incident.max_severity > change.before.max_severity:
            tx.notifications += self._notify(
                conn,
                incident_id=incident.id,
                kind="grew",
                before_max=change.before.max_severity,
                after_max=incident.max_severity,
                now=now,
                tx=tx,
                model_name=model[0],
            )

    def _event(
        self,
        conn: Connection,
        incident_id: int,
        kind: str,
        *,
        actor: str = SYSTEM,
        comment: str | None = None,
        detail: dict[str, Any] | None = None,
        now: datetime,
    ) -> None:
        conn.execute(
            insert(IncidentEventRow).values(
                incident_id=incident_id,
                kind=kind,
                actor=actor,
                comment=comment,
                detail=detail or {},
                at=now,
            )
        )

    def _resolved(
        self,
        conn: Connection,
        incident_id: int,
        max_severity: float,
        now: datetime,
        *,
        tx: _Tx,
        actor: str = SYSTEM,
        comment: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._event(
            conn, incident_id, "resolved", actor=actor, comment=comment, detail=detail, now=now
        )
        tx.resolved += 1
        tx.notifications += self._notify(
            conn,
            incident_id=incident_id,
            kind="resolved",
            before_max=max_severity,
            after_max=max_severity,
            now=now,
            tx=tx,
        )

    # -- resolving ----------------------------------------------------------------------
    def resolve_idle(self, *, idle: timedelta, now: datetime) -> FoldReport:
        with self.engine.begin() as conn:
            self._lock(conn)
            rows = conn.execute(
                update(IncidentRow)
                .where(
                    IncidentRow.status.in_(LIVE_STATUSES),
                    IncidentRow.last_seen_at < now - idle,
                )
                .values(status="resolved", resolved_at=now, resolved_by=SYSTEM, updated_at=now)
                .returning(IncidentRow.id, IncidentRow.max_severity)
            ).all()
            tx = _Tx()
            comment = f"no new anomaly for {idle.total_seconds():g} s"
            for incident_id, max_severity in sorted(rows):
                self._resolved(conn, incident_id, max_severity, now, tx=tx, comment=comment)
        return FoldReport(resolved=tx.resolved, notifications=tx.notifications)

    def acknowledge_incident(
        self, incident_id: int, *, by: str, comment: str | None, now: datetime
    ) -> IncidentRecord:
        with self.engine.begin() as conn:
            self._lock(conn)
            row = self._incident_row(conn, incident_id, for_update=True)
            if row.status != "open":
                raise InvalidInput(
                    f"incident {incident_id} is {row.status}: only an open incident can be "
                    "acknowledged"
                )
            conn.execute(
                update(IncidentRow)
                .where(IncidentRow.id == incident_id)
                .values(
                    status="acknowledged", acknowledged_at=now, acknowledged_by=by, updated_at=now
                )
            )
            self._event(conn, incident_id, "acknowledged", actor=by, comment=comment, now=now)
            return _record(self._incident_row(conn, incident_id))

    def resolve_incident(
        self, incident_id: int, *, by: str, comment: str | None, now: datetime
    ) -> tuple[IncidentRecord, list[int]]:
        with self.engine.begin() as conn:
            self._lock(conn)
            row = self._incident_row(conn, incident_id, for_update=True)
            if row.status == "resolved":
                raise InvalidInput(f"incident {incident_id} is resolved already")
            conn.execute(
                update(IncidentRow)
                .where(IncidentRow.id == incident_id)
                .values(status="resolved", resolved_at=now, resolved_by=by, updated_at=now)
            )
            tx = _Tx()
            self._resolved(
                conn, incident_id, row.max_severity, now, tx=tx, actor=by, comment=comment
            )
            return _record(self._incident_row(conn, incident_id)), tx.notifications

    def _incident_row(self, conn: Connection, incident_id: int, *, for_update: bool = False) -> Any:
        query = select(IncidentRow).where(IncidentRow.id == incident_id)
        if for_update and self.dialect == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise UnknownIncident(
                f"no incident {incident_id}: list them with `pynomaly-workers incidents`"
            )
        return row

    # -- labels -------------------------------------------------------------------------
    def label_anomaly(
        self, anomaly_id: int, *, label: Label, by: str, comment: str | None, now: datetime
    ) -> LabelRecord:
        with self.engine.begin() as conn:
            anomaly = conn.execute(
                select(AnomalyRow.id, AnomalyRow.model_id).where(AnomalyRow.id == anomaly_id)
            ).first()
            if anomaly is None:
                raise UnknownAnomaly(
                    f"no anomaly {anomaly_id}: `pynomaly-workers anomalies --json` shows ids"
                )
            conn.execute(
                insert(AnomalyLabelRow).values(
                    anomaly_id=anomaly_id,
                    model_id=anomaly.model_id,
                    label=label,
                    actor=by,
                    comment=comment,
                    incident_id=None,
                    at=now,
                )
            )
        return LabelRecord(anomaly_id, label, by, comment, now, None)

    def label_incident(
        self, incident_id: int, *, label: Label, by: str, comment: str | None, now: datetime
    ) -> int:
        with self.engine.begin() as conn:
            row = self._incident_row(conn, incident_id)
            chosen = select(
                AnomalyRow.id,
                AnomalyRow.model_id,
                literal(label, String()),
                literal(by, String()),
                literal(comment, Text()),
                literal(incident_id, BigInteger()),
                literal(now, UtcDateTime()),
            ).where(*_members(row))
            # RETURNING, not rowcount: psycopg reports -1 once the cursor is closed.
            labelled = len(
                conn.execute(
                    insert(AnomalyLabelRow)
                    .from_select(
                        [
                            "anomaly_id",
                            "model_id",
                            "label",
                            "actor",
                            "comment",
                            "incident_id",
                            "at",
                        ],
                        chosen,
                    )
                    .returning(AnomalyLabelRow.id)
                ).all()
            )
            self._event(
                conn,
                incident_id,
                "labelled",
                actor=by,
                comment=comment,
                detail={"label": label, "anomalies": labelled},
                now=now,
            )
        return int(labelled)

    # -- reading ------------------------------------------------------------------------
    def list_incidents(
        self,
        *,
        status: IncidentStatus | None = None,
        model: str | None = None,
        limit: int = 50,
    ) -> list[IncidentRecord]:
        query = select(IncidentRow).order_by(IncidentRow.opened_at.desc(), IncidentRow.id.desc())
        if status is not None:
            query = query.where(IncidentRow.status == status)
        if model is not None:
            query = query.where(IncidentRow.model_name == model)
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query.limit(limit))]

    def get_incident(self, incident_id: int, *, top: int = 10) -> IncidentDetail:
        with self.engine.connect() as conn:
            row = self._incident_row(conn, incident_id)
            events = [
                IncidentEventRecord(e.id, e.kind, e.actor, e.comment, dict(e.detail), e.at)
                for e in conn.execute(
                    select(IncidentEventRow)
                    .where(IncidentEventRow.incident_id == incident_id)
                    .order_by(IncidentEventRow.id)
                )
            ]
            anomalies = [
                anomaly_record(a)
                for a in Session(bind=conn).scalars(
                    select(AnomalyRow)
                    .where(*_members(row))
                    .order_by(AnomalyRow.severity.desc(), AnomalyRow.id)
                    .limit(top)
                )
            ]
            counts: dict[str, int] = dict(
                conn.execute(
                    select(_latest_label.c.label, func.count())
                    .select_from(_latest_label)
                    .join(AnomalyRow, AnomalyRow.id == _latest_label.c.anomaly_id)
                    .where(*_members(row), _latest_label.c.rank == 1)
                    .group_by(_latest_label.c.label)
                ).all()
            )
        return IncidentDetail(
            incident=_record(row), events=events, top_anomalies=anomalies, labels=counts
        )

    def anomaly_labels(self, anomaly_id: int) -> list[LabelRecord]:
        with self.engine.connect() as conn:
            return [
                LabelRecord(r.anomaly_id, r.label, r.actor, r.comment, r.at, r.incident_id)
                for r in conn.execute(
                    select(AnomalyLabelRow)
                    .where(AnomalyLabelRow.anomaly_id == anomaly_id)
                    .order_by(AnomalyLabelRow.id.desc())
                )
            ]


_latest_label = (
    select(
        AnomalyLabelRow.anomaly_id,
        AnomalyLabelRow.label,
        func.row_number()
        .over(partition_by=AnomalyLabelRow.anomaly_id, order_by=AnomalyLabelRow.id.desc())
        .label("rank"),
    )
).subquery("latest_label")


def _same_entity(entity: str | None) -> ColumnElement[bool]:
    return IncidentRow.entity.is_(None) if entity is None else IncidentRow.entity == entity


def _members(row: Any) -> list[ColumnElement[bool]]:
    """The conditions that pick an incident's anomalies (suppressed ones never join)."""
    entity = AnomalyRow.entity.is_(None) if row.entity is None else AnomalyRow.entity == row.entity
    return [
        AnomalyRow.model_id == row.model_id,
        entity,
        AnomalyRow.timestamp >= row.first_ts,
        AnomalyRow.timestamp <= row.last_ts,
        AnomalyRow.suppressed_by.is_(None),
    ]


def _incident(row: Any) -> Incident:
    return Incident(
        id=row.id,
        model_id=row.model_id,
        entity=row.entity,
        status=row.status,
        first_ts=row.first_ts,
        last_ts=row.last_ts,
        anomaly_count=row.anomaly_count,
        max_severity=row.max_severity,
        feature_weights=dict(row.feature_weights or {}),
    )


def _figures(incident: Incident) -> dict[str, Any]:
    return {
        "anomaly_count": incident.anomaly_count,
        "max_severity": incident.max_severity,
        "band": severity_band(incident.max_severity),
    }


def _record(row: Any) -> IncidentRecord:
    return IncidentRecord(
        id=row.id,
        model_id=row.model_id,
        model_name=row.model_name,
        model_version=row.model_version,
        entity=row.entity,
        status=row.status,
        first_ts=row.first_ts,
        last_ts=row.last_ts,
        anomaly_count=row.anomaly_count,
        max_severity=row.max_severity,
        top_features=_incident(row).top_features(),
        opened_at=row.opened_at,
        last_seen_at=row.last_seen_at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by,
    )


__all__ = ["SqlIncidentStore", "UnknownAnomaly", "UnknownIncident"]
