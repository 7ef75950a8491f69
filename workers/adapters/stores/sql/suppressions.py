"""Suppression rules on SQL: added, listed, removed (kept, with who removed them), and the
live rules of a model, read by ``idx_suppression_rules_model`` (model_name, until DESC).
Their ``suppressed_count`` grows where anomalies are written (``bulk.count_suppressed``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.tables import SuppressionRuleRow
from pynomaly_workers.domain.suppression import RuleDraft, SuppressionError, SuppressionRule


class SqlSuppressionStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.SuppressionStore` on SQL."""

    def add_rule(self, draft: RuleDraft, *, now: datetime) -> SuppressionRule:
        row = SuppressionRuleRow(
            model_name=draft.model_name,
            entity=draft.entity,
            feature=draft.feature,
            low=draft.low,
            high=draft.high,
            until=draft.until,
            reason=draft.reason,
            actor=draft.actor,
            created_at=now,
            suppressed_count=0,
        )
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return suppression_rule(row)

    def remove_rule(self, rule_id: int, *, by: str, now: datetime) -> SuppressionRule:
        with Session(self.engine) as session, session.begin():
            removed = session.execute(
                update(SuppressionRuleRow)
                .where(SuppressionRuleRow.id == rule_id, SuppressionRuleRow.removed_at.is_(None))
                .values(removed_at=now, removed_by=by)
                .returning(SuppressionRuleRow.id)
            ).first()
            row = session.get(SuppressionRuleRow, rule_id, populate_existing=True)
            if row is None:
                raise SuppressionError(
                    f"no suppression rule {rule_id}: 'pynomaly-workers suppress list --all' "
                    "shows them"
                )
            if removed is None:
                raise SuppressionError(
                    f"suppression rule {rule_id} was removed already, by {row.removed_by} at "
                    f"{row.removed_at:%Y-%m-%d %H:%M:%S}"
                )
            return suppression_rule(row)

    def list_rules(
        self, *, now: datetime, model: str | None = None, ended: bool = False
    ) -> list[SuppressionRule]:
        query = select(SuppressionRuleRow).order_by(SuppressionRuleRow.id.desc())
        if model is not None:
            query = query.where(SuppressionRuleRow.model_name == model)
        if not ended:
            query = query.where(
                SuppressionRuleRow.removed_at.is_(None), SuppressionRuleRow.until > now
            )
        with Session(self.engine) as session:
            return [suppression_rule(row) for row in session.scalars(query)]

    def live_rules(self, model_name: str | None, *, now: datetime) -> list[SuppressionRule]:
        query = (
            select(SuppressionRuleRow)
            .where(SuppressionRuleRow.until > now, SuppressionRuleRow.removed_at.is_(None))
            .order_by(SuppressionRuleRow.id)
        )
        if model_name is not None:
            query = query.where(SuppressionRuleRow.model_name == model_name)
        with Session(self.engine) as session:
            return [suppression_rule(row) for row in session.scalars(query)]


def suppression_rule(row: SuppressionRuleRow) -> SuppressionRule:
    return SuppressionRule(
        id=row.id,
        model_name=row.model_name,
        until=row.until,
        reason=row.reason,
        actor=row.actor,
        created_at=row.created_at,
        entity=row.entity,
        feature=row.feature,
        low=row.low,
        high=row.high,
        removed_at=row.removed_at,
        removed_by=row.removed_by,
        suppressed_count=row.suppressed_count,
    )
