"""PostgreSQL TLS settings travel in PYNOMALY_DATABASE_URL: ``sslmode`` (and the other libpq
parameters) reach the driver unchanged, checked against the real server."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from pynomaly_workers.adapters.stores.engine import build_engine, normalize_url
from tests.conftest import DATABASE_URL, _require_postgres

pytestmark = pytest.mark.integration


def _with(url: str, **params: str) -> str:
    separator = "&" if "?" in url else "?"
    return url + separator + "&".join(f"{k}={v}" for k, v in params.items())


@pytest.mark.parametrize("scheme", ["postgresql://", "postgres://", "postgresql+psycopg://"])
def test_query_parameters_survive_normalisation(scheme: str) -> None:
    url = f"{scheme}u:p@db.example:5432/x?sslmode=verify-full&sslrootcert=/etc/ca.pem"

    normalized = normalize_url(url)

    assert normalized.startswith("postgresql+psycopg://")
    assert normalized.endswith("?sslmode=verify-full&sslrootcert=/etc/ca.pem")


def test_sslmode_disable_connects_in_plain_text() -> None:
    _require_postgres()
    engine = build_engine(_with(DATABASE_URL, sslmode="disable"))
    try:
        with engine.connect() as conn:
            ssl = conn.execute(
                text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            ).scalar_one()
    finally:
        engine.dispose()
    assert ssl is False


def test_sslmode_require_reaches_libpq() -> None:
    # The test server has no TLS: a required TLS connection must be refused by libpq,
    # which proves the parameter got there (dropped, the connection would succeed).
    _require_postgres()
    engine = build_engine(_with(DATABASE_URL, sslmode="require"))
    try:
        with pytest.raises(OperationalError, match="SSL was required"), engine.connect():
            pass
    finally:
        engine.dispose()
