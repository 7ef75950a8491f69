"""``slow_queries`` on a PostgreSQL that preloads pg_stat_statements.

The shared test server does not preload it (``test_maintenance.py`` covers that case), so
this module starts a private, throwaway cluster on a free port with
``shared_preload_libraries = pg_stat_statements``, or uses
``PYNOMALY_TEST_STATEMENTS_DATABASE_URL`` when set. A machine that can do neither fails
with what to do; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.migrate import upgrade
from pynomaly_workers.services.maintenance import run_maintenance
from pynomaly_workers.settings import Settings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(*command: str) -> None:
    """Run a server command as the postgres user (initdb refuses root)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)


def _bindir() -> Path:
    try:
        found = subprocess.run(
            ["pg_config", "--bindir"], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(
            f"cannot find PostgreSQL's binaries ({exc}); install the server package or set "
            "PYNOMALY_TEST_STATEMENTS_DATABASE_URL to a server that preloads pg_stat_statements"
        )
    return Path(found)


@pytest.fixture(scope="module")
def statements_url() -> Iterator[str]:
    """A database whose server preloads pg_stat_statements."""
    given = os.environ.get("PYNOMALY_TEST_STATEMENTS_DATABASE_URL")
    if given:
        yield given
        return
    bindir, port = _bindir(), _free_port()
    folder = Path(tempfile.mkdtemp(prefix="pyn-pgstat-"))
    if os.geteuid() == 0:
        shutil.chown(folder, user="postgres")
    data = folder / "data"
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder} "
        "-c shared_preload_libraries=pg_stat_statements -c fsync=off"
    )
    try:
        _as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
        # -l: the server's output goes to a file, not to the pipes run() waits on.
        log = str(folder / "server.log")
        _as_postgres(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", log, "-o", options, "-w", "start"
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"could not start a private PostgreSQL: {exc.stderr.decode()[-2000:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_slow_queries_stores_the_slowest_statements(
    statements_url: str, make_settings: Callable[..., Settings]
) -> None:
    # Given a migrated database (the migration creates the extension) that has run a
    # statement much slower than the others
    upgrade(statements_url)
    adapters = bootstrap(make_settings(database_url=statements_url, slow_queries_top=5))
    engine = adapters.maintenance.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_statements_reset()"))
        conn.execute(text("SELECT count(*) FROM generate_series(1, 2000000) AS slow_marker"))
        conn.execute(text("SELECT 1"))

    # When slow_queries runs
    run = run_maintenance(adapters, "slow_queries")

    # Then the slowest statement is in metrics, with its text and timings
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT value, labels FROM metrics "
                "WHERE metric_name = 'pg_stat_statements.mean_exec_ms' ORDER BY value DESC"
            )
        ).all()
    adapters.close()
    assert run.outcome == "succeeded"
    assert run.detail == {"available": True, "statements": len(rows)}
    assert 1 <= len(rows) <= 5
    slowest_value, slowest = rows[0]
    assert "slow_marker" in slowest["query"]
    assert slowest["calls"] == 1
    assert slowest_value > 0
