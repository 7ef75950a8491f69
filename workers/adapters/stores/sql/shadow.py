"""Shadow scoring results on SQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.tables import ModelRow, ShadowAnomalyRow, ShadowResultRow
from pynomaly_workers.domain.shadow import ShadowTally


class SqlShadowStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.ShadowStore` on SQL."""

    def add_shadow(
        self,
        job_id: str,
        chunk_index: int,
        *,
        champion_id: int,
        challenger_id: int,
        tally: ShadowTally,
        flagged: Sequence[tuple[int, float, float]],
        now: datetime,
    ) -> None:
        """Record one chunk's comparison and the challenger's flagged records (index,
        score, severity), once: a redelivered chunk changes nothing."""
        result = {
            "job_id": job_id,
            "chunk_index": chunk_index,
            "challenger_model_id": challenger_id,
            "champion_model_id": champion_id,
            "tally": dataclasses.asdict(tally),
            "created_at": now,
        }
        anomalies = [
            {
                "job_id": job_id,
                "record_index": index,
                "challenger_model_id": challenger_id,
                "score": score,
                "severity": severity,
                "created_at": now,
            }
            for index, score, severity in flagged
        ]
        with self.engine.begin() as conn:
            written = conn.execute(
                self._insert(ShadowResultRow)
                .values(**result)
                .on_conflict_do_nothing()
                .returning(ShadowResultRow.job_id)
            ).first()
            if written is not None and anomalies:
                conn.execute(self._insert(ShadowAnomalyRow).on_conflict_do_nothing(), anomalies)

    def shadow_comparison(self, name: str) -> list[dict[str, Any]]:
        """Per (champion version, challenger version) of the model: how they compare."""
        champion, challenger = aliased(ModelRow), aliased(ModelRow)
        query = (
            select(ShadowResultRow.tally, champion.version, challenger.version)
            .join(champion, champion.id == ShadowResultRow.champion_model_id)
            .join(challenger, challenger.id == ShadowResultRow.challenger_model_id)
            .where(champion.name == name)
        )
        pairs: dict[tuple[int, int], ShadowTally] = {}
        with Session(self.engine) as session:
            for tally, champion_version, challenger_version in session.execute(query):
                pairs.setdefault((champion_version, challenger_version), ShadowTally()).add(
                    ShadowTally(**tally)
                )
        return [
            {"champion_version": a, "challenger_version": b, **t.comparison()}
            for (a, b), t in sorted(pairs.items())
        ]
