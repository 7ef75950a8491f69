"""Named datasets on SQL."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.sql.rows import dataset
from pynomaly_workers.adapters.stores.tables import DatasetRow
from pynomaly_workers.domain.errors import UnknownDataset
from pynomaly_workers.domain.ports import Dataset


class SqlDatasetStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.DatasetStore` on SQL."""

    def register_dataset(self, dataset: Dataset, *, now: datetime) -> Dataset:
        values = {
            "name": dataset.name,
            "uri": dataset.uri,
            "format": dataset.format,
            "n_rows": dataset.n_rows,
            "n_features": dataset.n_features,
            "columns": {"features": dataset.columns},
            "status": dataset.status,
            "created_at": now,
            "label_column": dataset.label_column,
        }
        statement = self._insert(DatasetRow).values(**values)
        updates = {k: v for k, v in values.items() if k != "name"}
        with self.engine.begin() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=["name"], set_=updates))
        return self.get_dataset(dataset.name)

    def get_dataset(self, name: str) -> Dataset:
        with Session(self.engine) as session:
            row = session.scalars(select(DatasetRow).where(DatasetRow.name == name)).first()
            if row is None:
                raise UnknownDataset(
                    f"no dataset named {name!r}; register it with "
                    "'pynomaly-workers datasets add NAME PATH' or pass 'source' instead"
                )
            return dataset(row)

    def list_datasets(self) -> list[Dataset]:
        with Session(self.engine) as session:
            rows = session.scalars(select(DatasetRow).order_by(DatasetRow.created_at.desc()))
            return [dataset(row) for row in rows]
