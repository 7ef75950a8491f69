"""Thresholds set by intent on SQL: the threshold in force per model version
(``model_thresholds``), every change (``threshold_changes``, never updated), and what a
projection reads: a version's fine score counts per window and its labelled anomalies;
and the alert precision of each version from triage's labels."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.sql.rows import model_version
from pynomaly_workers.adapters.stores.tables import (
    AnomalyLabelRow,
    AnomalyRow,
    DriftWindowRow,
    ModelRow,
    ModelThresholdRow,
    ShadowAnomalyRow,
    ThresholdChangeRow,
)
from pynomaly_workers.domain.drift import DriftCounts
from pynomaly_workers.domain.errors import InvalidInput, UnknownModel
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.thresholds import AlertPrecision, ThresholdAction, ThresholdChange


def model_versions(session: Session, query: Select[Any]) -> list[ModelVersion]:
    """The versions ``query`` (on ``ModelRow``) selects, each with the threshold in force:
    a recorded change's, else the trained one (one outer join, no second read)."""
    joined = query.add_columns(ModelThresholdRow.threshold).outerjoin(
        ModelThresholdRow, ModelThresholdRow.model_id == ModelRow.id
    )
    return [model_version(row, threshold=threshold) for row, threshold in session.execute(joined)]


class SqlThresholdStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.ThresholdStore` on SQL."""

    def set_threshold(
        self,
        model_id: int,
        threshold: float,
        *,
        intent: dict[str, Any],
        projection: dict[str, Any],
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> ThresholdChange:
        """Put ``threshold`` in force for the version and record the change."""
        with Session(self.engine) as session, session.begin():
            model = self._locked_model(session, model_id)
            return self._change(
                session,
                model,
                threshold,
                action="set",
                intent=intent,
                projection=projection,
                actor=actor,
                reason=reason,
                now=now,
            )

    def rollback_threshold(
        self,
        model_id: int,
        *,
        last_change_id: int,
        projection: dict[str, Any],
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> ThresholdChange:
        """Put back the threshold in force before change ``last_change_id``, which must
        still be the version's last change (a second rollback undoes the first)."""
        with Session(self.engine) as session, session.begin():
            model = self._locked_model(session, model_id)
            last = session.scalars(
                select(ThresholdChangeRow)
                .where(ThresholdChangeRow.model_id == model_id)
                .order_by(ThresholdChangeRow.id.desc())
                .limit(1)
            ).first()
            if last is None or last.id != last_change_id:
                raise InvalidInput(
                    f"the threshold of {model.name}@{model.version} changed while the "
                    "rollback was prepared; look at 'models threshold --history' and try again"
                )
            return self._change(
                session,
                model,
                last.previous_threshold,
                action="rollback",
                intent={"kind": "rollback", "of_change": last.id},
                projection=projection,
                actor=actor,
                reason=reason,
                now=now,
            )

    def threshold_history(self, model_id: int) -> list[ThresholdChange]:
        """Every change of the version's threshold, newest first."""
        query = (
            select(ThresholdChangeRow, ModelRow.name, ModelRow.version)
            .join(ModelRow, ModelRow.id == ThresholdChangeRow.model_id)
            .where(ThresholdChangeRow.model_id == model_id)
            .order_by(ThresholdChangeRow.id.desc())
        )
        with Session(self.engine) as session:
            return [_change(row, name, version) for row, name, version in session.execute(query)]

    def score_windows(
        self, model_id: int, *, since: datetime
    ) -> list[tuple[datetime, DriftCounts]]:
        """The version's drift windows starting at ``since`` or later, oldest first."""
        query = (
            select(DriftWindowRow.window_start, DriftWindowRow.counts)
            .where(DriftWindowRow.model_id == model_id, DriftWindowRow.window_start >= since)
            .order_by(DriftWindowRow.window_start)
        )
        with Session(self.engine) as session:
            return [(start, DriftCounts.from_dict(c)) for start, c in session.execute(query)]

    def labelled_scores(self, model_id: int) -> list[tuple[float, str]]:
        """The score and newest label of each labelled anomaly the version stored."""
        latest = _latest_labels(AnomalyLabelRow.model_id == model_id)
        query = (
            select(AnomalyRow.score, latest.c.label)
            .join(AnomalyRow, AnomalyRow.id == latest.c.anomaly_id)
            .where(latest.c.rank == 1)
        )
        with Session(self.engine) as session:
            return [(float(score), str(label)) for score, label in session.execute(query)]

    def alert_precision(self, *, name: str | None = None) -> list[AlertPrecision]:
        """Per version (of ``name``, or every one) with labelled anomalies or shadow
        flags: labelled and confirmed among its stored anomalies and its shadow flags."""
        named = select(ModelRow.id).where(ModelRow.name == name) if name is not None else None
        with Session(self.engine) as session:
            stored = {m: (n, c) for m, n, c in session.execute(_stored_precision(named))}
            shadow = {m: (f, n, c) for m, f, n, c in session.execute(_shadow_precision(named))}
            ids = sorted(set(stored) | set(shadow))
            query = select(ModelRow.id, ModelRow.name, ModelRow.version).where(ModelRow.id.in_(ids))
            found = [
                AlertPrecision(
                    model_name,
                    version,
                    *stored.get(model_id, (0, 0)),
                    *shadow.get(model_id, (0, 0, 0)),
                )
                for model_id, model_name, version in session.execute(query)
            ]
        return sorted(found, key=lambda p: (p.model, p.version))

    @staticmethod
    def _locked_model(session: Session, model_id: int) -> ModelRow:
        """The version's row, locked: changes of one version's threshold take turns."""
        model = session.get(ModelRow, model_id, with_for_update=True)
        if model is None:
            raise UnknownModel(f"no model version with id {model_id}")
        return model

    @staticmethod
    def _change(
        session: Session,
        model: ModelRow,
        threshold: float,
        *,
        action: ThresholdAction,
        intent: dict[str, Any],
        projection: dict[str, Any],
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> ThresholdChange:
        current = session.get(ModelThresholdRow, model.id)
        previous = current.threshold if current is not None else model.threshold
        row = ThresholdChangeRow(
            model_id=model.id,
            threshold=threshold,
            previous_threshold=previous,
            action=action,
            intent=intent,
            projection=projection,
            actor=actor,
            reason=reason,
            at=now,
        )
        session.add(row)
        session.flush()
        if current is None:
            session.add(
                ModelThresholdRow(
                    model_id=model.id, threshold=threshold, change_id=row.id, updated_at=now
                )
            )
        else:
            current.threshold, current.change_id, current.updated_at = threshold, row.id, now
        session.flush()
        return _change(row, model.name, model.version)


def _change(row: ThresholdChangeRow, name: str, version: int) -> ThresholdChange:
    action: ThresholdAction = "rollback" if row.action == "rollback" else "set"
    return ThresholdChange(
        id=row.id,
        model=name,
        version=version,
        threshold=row.threshold,
        previous_threshold=row.previous_threshold,
        action=action,
        intent=dict(row.intent),
        projection=dict(row.projection),
        actor=row.actor,
        reason=row.reason,
        at=row.at,
    )


def _latest_labels(*where: Any) -> Any:
    """Each labelled anomaly's labels ranked newest first (rank 1 counts)."""
    return (
        select(
            AnomalyLabelRow.anomaly_id,
            AnomalyLabelRow.model_id,
            AnomalyLabelRow.label,
            func.row_number()
            .over(partition_by=AnomalyLabelRow.anomaly_id, order_by=AnomalyLabelRow.id.desc())
            .label("rank"),
        )
        .where(*where)
        .subquery("latest_label")
    )


def _of(named: Select[Any] | None) -> list[Any]:
    """The labels of the ``named`` versions (all without a name)."""
    return [AnomalyLabelRow.model_id.in_(named)] if named is not None else []


def _confirmed(label: Any) -> Any:
    return func.coalesce(func.sum(case((label == "anomaly", 1), else_=0)), 0)


def _stored_precision(named: Select[Any] | None) -> Select[Any]:
    """Per version (among ``named``, if given): its labelled anomalies, and how many are
    labelled ``anomaly``."""
    latest = _latest_labels(*_of(named))
    return (
        select(latest.c.model_id, func.count(), _confirmed(latest.c.label))
        .where(latest.c.rank == 1)
        .group_by(latest.c.model_id)
    )


def _shadow_precision(named: Select[Any] | None) -> Select[Any]:
    """Per challenger version (among ``named``, if given): its shadow flags, those whose
    record the champion stored and someone labelled, and how many of those are labelled
    ``anomaly`` (the label is about the record, whichever version flagged it; champion
    and challenger are versions of one name)."""
    latest = _latest_labels(*_of(named))
    flag = ShadowAnomalyRow
    query = (
        select(
            flag.challenger_model_id,
            func.count(),
            func.count(latest.c.label),
            _confirmed(latest.c.label),
        )
        .select_from(flag)
        .outerjoin(
            AnomalyRow,
            (AnomalyRow.job_id == flag.job_id) & (AnomalyRow.record_index == flag.record_index),
        )
        .outerjoin(latest, (latest.c.anomaly_id == AnomalyRow.id) & (latest.c.rank == 1))
        .group_by(flag.challenger_model_id)
    )
    return query.where(flag.challenger_model_id.in_(named)) if named is not None else query
