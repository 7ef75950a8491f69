"""The model registry on SQL: immutable versions and content-addressed artifacts."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.sql.rows import model_version, sha256
from pynomaly_workers.adapters.stores.sql.thresholds import model_versions
from pynomaly_workers.adapters.stores.tables import (
    ModelAliasMoveRow,
    ModelAliasRow,
    ModelArtifactRow,
    ModelRow,
)
from pynomaly_workers.domain.errors import ArtifactCorrupt, InvalidInput, UnknownModel
from pynomaly_workers.domain.models import AliasMove, ModelRef, ModelVersion
from pynomaly_workers.domain.ports import ModelDraft

_REGISTER_ATTEMPTS = 5
S = TypeVar("S", bound=Select[Any])


class SqlModelStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.ModelStore` on SQL."""

    def register_model(self, draft: ModelDraft, *, now: datetime) -> ModelVersion:
        """Next version number for the name; retried if two trainers race for it."""
        for attempt in range(_REGISTER_ATTEMPTS):
            try:
                return self._insert_model(draft, now=now)
            except IntegrityError:
                if attempt == _REGISTER_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _insert_model(self, draft: ModelDraft, *, now: datetime) -> ModelVersion:
        with Session(self.engine) as session, session.begin():
            if self.dialect == "postgresql":
                # Serialize registrations of one name: optimistic retries alone starve
                # when several trainers race (8 at once exhausted the 5 attempts).
                session.execute(select(func.pg_advisory_xact_lock(func.hashtext(draft.name))))
            if draft.training_task_id is not None:
                # Under the name's lock: two deliveries of one request register once.
                done = self._trained_by(session, draft.training_task_id)
                if done is not None:
                    return model_version(done)
            for content, media in ((draft.artifact, "sklearn"), (draft.onnx, "onnx")):
                if content is not None:
                    self._put_artifact(session, content, media_type=media, now=now)
            latest = session.scalar(
                select(func.max(ModelRow.version)).where(ModelRow.name == draft.name)
            )
            session.execute(
                update(ModelRow).where(ModelRow.name == draft.name).values(active=False)
            )
            session.flush()
            row = ModelRow(
                name=draft.name,
                version=(latest or 0) + 1,
                algorithm=draft.algorithm,
                artifact_sha256=sha256(draft.artifact),
                onnx_sha256=sha256(draft.onnx) if draft.onnx is not None else None,
                n_features=draft.n_features,
                contamination=draft.stats.contamination,
                threshold=draft.stats.threshold,
                score_stats=draft.stats.to_dict(),
                params=draft.params,
                parity_max_error=draft.parity_max_error,
                parity_tolerance=draft.parity_tolerance,
                n_training_rows=draft.n_training_rows,
                active=True,
                created_at=now,
                profile=draft.profile.to_dict() if draft.profile is not None else None,
                training_task_id=draft.training_task_id,
            )
            session.add(row)
            session.flush()
            return model_version(row)

    def find_trained_by(self, training_task_id: str) -> ModelVersion | None:
        with Session(self.engine) as session:
            row = self._trained_by(session, training_task_id)
            return model_version(row) if row is not None else None

    @staticmethod
    def _trained_by(session: Session, training_task_id: str) -> ModelRow | None:
        query = select(ModelRow).where(ModelRow.training_task_id == training_task_id)
        return session.scalars(query).first()

    def _put_artifact(
        self, session: Session, content: bytes, *, media_type: str, now: datetime
    ) -> None:
        digest = sha256(content)
        if session.get(ModelArtifactRow, digest) is None:
            session.add(
                ModelArtifactRow(
                    sha256=digest,
                    media_type=media_type,
                    size_bytes=len(content),
                    content=content,
                    created_at=now,
                )
            )
            session.flush()

    def get_model(self, ref: ModelRef) -> ModelVersion:
        query = select(ModelRow).where(ModelRow.name == ref.name)
        if ref.alias is not None:
            query = query.join(ModelAliasRow, ModelAliasRow.model_id == ModelRow.id).where(
                ModelAliasRow.name == ref.name, ModelAliasRow.alias == ref.alias
            )
        elif ref.version is None:
            query = query.where(ModelRow.active.is_(True))
        else:
            query = query.where(ModelRow.version == ref.version)
        with Session(self.engine) as session:
            found = model_versions(session, query.limit(1))
            if not found:
                raise UnknownModel(unknown_model_message(session, ref))
            return found[0]

    def get_active_models(self, names: Collection[str]) -> dict[str, ModelVersion]:
        if not names:
            return {}
        query = select(ModelRow).where(ModelRow.name.in_(sorted(set(names))))
        query = query.where(ModelRow.active.is_(True))
        with Session(self.engine) as session:
            return {version.name: version for version in model_versions(session, query)}

    def list_models(
        self,
        *,
        name: str | None = None,
        match: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ModelVersion]:
        # (name, version DESC): uq_models_name_version read in name order, each name's
        # few versions sorted on the way (an incremental sort), so a page stops early.
        query = _filtered(select(ModelRow), name=name, match=match)
        query = query.order_by(ModelRow.name, ModelRow.version.desc())
        query = query.limit(limit).offset(offset or None)
        with Session(self.engine) as session:
            return model_versions(session, query)

    def count_models(self, *, name: str | None = None, match: str | None = None) -> int:
        query = _filtered(select(func.count()).select_from(ModelRow), name=name, match=match)
        with Session(self.engine) as session:
            return int(session.scalar(query) or 0)

    def count_trained_by(self, task_id: str) -> int:
        escaped = task_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = (
            select(func.count())
            .select_from(ModelRow)
            .where(ModelRow.training_task_id.like(f"{escaped}:%", escape="\\"))
        )
        with Session(self.engine) as session:
            return int(session.scalar(query) or 0)

    # -- aliases --------------------------------------------------------------------
    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        now: datetime,
        actor: str | None = None,
        reason: str | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> AliasMove:
        """Point ``name@alias`` at ``version`` and record the move (who, why, and the
        evaluations it was judged on, when given)."""
        with Session(self.engine) as session, session.begin():
            target = self._version_row(session, name, version)
            return self._move(
                session,
                name,
                alias,
                target,
                action="set",
                now=now,
                actor=actor,
                reason=reason,
                evidence=evidence,
            )

    def rollback_alias(self, name: str, alias: str, *, now: datetime) -> AliasMove:
        """Point ``name@alias`` back where it pointed before its last move (a second
        rollback undoes the first, like ``kubectl rollout undo``)."""
        with Session(self.engine) as session, session.begin():
            last = session.scalars(
                select(ModelAliasMoveRow)
                .where(ModelAliasMoveRow.name == name, ModelAliasMoveRow.alias == alias)
                .order_by(ModelAliasMoveRow.id.desc())
                .limit(1)
                .with_for_update()
            ).first()
            if last is None:
                raise UnknownModel(f"model {name!r} has no alias {alias!r} to roll back")
            if last.previous_model_id is None:
                raise InvalidInput(
                    f"{name}@{alias} has pointed only at one version; there is nothing to "
                    "roll back to (move it with 'pynomaly-workers models alias')"
                )
            target = session.get(ModelRow, last.previous_model_id)
            assert target is not None
            return self._move(session, name, alias, target, action="rollback", now=now)

    def alias_history(self, name: str, *, alias: str | None = None) -> list[AliasMove]:
        """Every move of the model's aliases, newest first."""
        previous = aliased(ModelRow)
        query = (
            select(ModelAliasMoveRow, ModelRow.version, previous.version)
            .join(ModelRow, ModelRow.id == ModelAliasMoveRow.model_id)
            .outerjoin(previous, previous.id == ModelAliasMoveRow.previous_model_id)
            .where(ModelAliasMoveRow.name == name)
            .order_by(ModelAliasMoveRow.id.desc())
        )
        if alias is not None:
            query = query.where(ModelAliasMoveRow.alias == alias)
        with Session(self.engine) as session:
            return [
                AliasMove(
                    row.name,
                    row.alias,
                    version,
                    before,
                    row.action,
                    row.moved_at,
                    actor=row.actor,
                    reason=row.reason,
                    evidence=row.evidence,
                )
                for row, version, before in session.execute(query)
            ]

    def _version_row(self, session: Session, name: str, version: int) -> ModelRow:
        row = session.scalars(
            select(ModelRow).where(ModelRow.name == name, ModelRow.version == version)
        ).first()
        if row is None:
            raise UnknownModel(unknown_model_message(session, ModelRef(name, version)))
        return row

    def _move(
        self,
        session: Session,
        name: str,
        alias: str,
        target: ModelRow,
        *,
        action: str,
        now: datetime,
        actor: str | None = None,
        reason: str | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> AliasMove:
        current = session.get(ModelAliasRow, (name, alias), with_for_update=True)
        previous_id = current.model_id if current is not None else None
        if current is None:
            session.add(ModelAliasRow(name=name, alias=alias, model_id=target.id, updated_at=now))
        else:
            current.model_id, current.updated_at = target.id, now
        session.add(
            ModelAliasMoveRow(
                name=name,
                alias=alias,
                model_id=target.id,
                previous_model_id=previous_id,
                action=action,
                moved_at=now,
                actor=actor,
                reason=reason,
                evidence=evidence,
            )
        )
        session.flush()
        before = session.get(ModelRow, previous_id) if previous_id is not None else None
        return AliasMove(
            name,
            alias,
            target.version,
            before.version if before else None,
            action,
            now,
            actor=actor,
            reason=reason,
            evidence=evidence,
        )

    def load_artifact(self, sha256_hex: str) -> bytes:
        with Session(self.engine) as session:
            content = session.scalar(
                select(ModelArtifactRow.content).where(ModelArtifactRow.sha256 == sha256_hex)
            )
        if content is None:
            raise ArtifactCorrupt(f"artifact {sha256_hex} is missing from model_artifacts")
        if sha256(content) != sha256_hex:
            raise ArtifactCorrupt(f"artifact {sha256_hex} does not match its sha256; refusing it")
        return bytes(content)


def _filtered(query: S, *, name: str | None, match: str | None) -> S:
    """``query`` on the versions named ``name`` and/or whose name contains ``match``
    (any case; ``%`` and ``_`` are plain characters)."""
    if name is not None:
        query = query.where(ModelRow.name == name)
    if match:
        query = query.where(ModelRow.name.icontains(match, autoescape=True))
    return query


def unknown_model_message(session: Session, ref: ModelRef) -> str:
    versions = session.scalars(
        select(ModelRow.version).where(ModelRow.name == ref.name).order_by(ModelRow.version)
    ).all()
    if not versions:
        return (
            f"no model named {ref.name!r}; train one with pynomaly.train "
            "('pynomaly-workers train') or check the name with 'pynomaly-workers models'"
        )
    if ref.alias is not None:
        return (
            f"model {ref.name!r} has no alias {ref.alias!r}; point it at a version with "
            f"'pynomaly-workers models alias {ref.name} {ref.alias} VERSION'"
        )
    if ref.version is None:
        return f"model {ref.name!r} has no active version; pass 'name@version'"
    return f"model {ref.name!r} has no version {ref.version}; it has versions {list(versions)}"
