"""``pynomaly-workers models`` on a registry of 10,000 versions: pages in SQL, a name
filter, the total, and the same answers on SQLite."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from pynomaly_workers.adapters.stores.engine import build_engine
from pynomaly_workers.adapters.stores.maintenance import MATERIALIZED_VIEWS, SqlMaintenance
from pynomaly_workers.adapters.stores.reads import SqlReads
from pynomaly_workers.adapters.stores.sql import SqlStore

pytestmark = pytest.mark.integration
NAMES, VERSIONS = 2_000, 5
TOTAL = NAMES * VERSIONS
# Names where '_' and '%' must match themselves, not any character.
ODD_NAMES = ("Pump_A", "pumpXA", "pump%1")
STATS = (
    "json_build_object('threshold', 0.5, 'contamination', 0.01, 'mean', 0.4, 'std', 0.1, "
    "'max_score', 0.9, 'scale', 0.1, 'n', 400, 'quantiles', "
    "(SELECT json_agg(q / 100.0) FROM generate_series(0, 100) q))"
)


def seed(engine: Engine) -> None:
    """10,000 versions (2,000 names x 5) and three odd names, inserted in bulk; no
    training. Version 5 of each name is the active one."""
    columns = (
        "name, version, algorithm, artifact_sha256, n_features, contamination, threshold, "
        "score_stats, params, n_training_rows, active, created_at"
    )
    values = f"'iforest', 'a', 4, 0.01, 0.5, {STATS}, '{{}}', 400"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO model_artifacts VALUES ('a', 'sklearn', 1, 'x', now())"))
        conn.execute(
            text(
                f"INSERT INTO models ({columns}) SELECT 'fleet-' || lpad((g / :v)::text, 4, "
                f"'0'), 1 + g % :v, {values}, g % :v = :v - 1, now() "
                "FROM generate_series(0, :n - 1) g"
            ),
            {"v": VERSIONS, "n": TOTAL},
        )
        for name in ODD_NAMES:
            conn.execute(
                text(f"INSERT INTO models ({columns}) SELECT :name, 1, {values}, true, now()"),
                {"name": name},
            )
    SqlMaintenance(engine).refresh_views()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


@pytest.fixture(scope="module")
def registry(pg_url: str) -> Iterator[Engine]:
    """The seeded PostgreSQL schema; emptied afterwards."""
    engine = build_engine(pg_url)
    seed(engine)
    yield engine
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE models, model_artifacts RESTART IDENTITY CASCADE"))
        for view in MATERIALIZED_VIEWS:
            conn.execute(text(f"REFRESH MATERIALIZED VIEW {view}"))
    engine.dispose()


def everything(engine: Engine) -> list[tuple[str, int]]:
    """Every version in listing order, by a plain query."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, version FROM models ORDER BY name, version DESC"))
        return [(name, version) for name, version in rows]


def test_pages_cover_every_version_once_in_order(registry: Engine) -> None:
    # Given 10,003 versions, When they are read a page of 1,000 at a time
    store = SqlStore(registry)
    pages = [store.list_models(limit=1_000, offset=o) for o in range(0, TOTAL + 1_000, 1_000)]

    # Then the pages are full but the last, and together list each version once, in order
    assert [len(p) for p in pages] == [1_000] * 10 + [3]
    assert [(m.name, m.version) for p in pages for m in p] == everything(registry)
    assert store.count_models() == TOTAL + len(ODD_NAMES)
    assert store.list_models(limit=50, offset=TOTAL + 3) == []


def test_the_name_filters_are_exact_or_a_substring_in_any_case(registry: Engine) -> None:
    store = SqlStore(registry)

    by_name = store.list_models(name="fleet-0042")
    contains = store.list_models(match="ET-004", limit=1_000)
    underscore = store.list_models(match="p_a")
    percent = store.list_models(match="p%")

    assert [(m.name, m.version) for m in by_name] == [("fleet-0042", v) for v in (5, 4, 3, 2, 1)]
    assert {m.name for m in contains} == {f"fleet-{i:04d}" for i in range(40, 50)}
    assert len(contains) == store.count_models(match="ET-004") == 50
    # '_' and '%' are themselves, not wildcards: "pumpXA" does not match "p_a"
    assert [m.name for m in underscore] == ["Pump_A"]
    assert [m.name for m in percent] == ["pump%1"]
    assert store.count_models(name="fleet-0042", match="nothing") == 0


def test_the_page_reads_the_name_index_and_sorts_only_what_it_returns(registry: Engine) -> None:
    # Given the query the store sends for a first page of 50, as it reached the driver
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(registry, "before_cursor_execute", capture)
    try:
        page = SqlStore(registry).list_models(limit=50)
    finally:
        event.remove(registry, "before_cursor_execute", capture)
    [(statement, parameters)] = [s for s in sent if "FROM models" in s[0]]

    # When PostgreSQL plans and runs it
    with registry.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        explain = f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"
        plan = conn.exec_driver_sql(explain, parameters).scalar_one()
    nodes = flatten(plan[0]["Plan"])

    # Then it walks uq_models_name_version and stops after about a page: an incremental
    # sort of each name's versions, not a sort of the whole registry
    scan = next(n for n in nodes if n.get("Index Name") == "uq_models_name_version")
    assert scan["Actual Rows"] <= 60, nodes
    assert "Sort" not in {n["Node Type"] for n in nodes}, nodes
    assert [(m.name, m.version) for m in page] == everything(registry)[:50]


def flatten(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in flatten(child))]


def test_the_performance_of_a_page_reads_only_that_page(registry: Engine) -> None:
    store, reads = SqlStore(registry), SqlReads(registry)
    page = store.list_models(limit=50, offset=500)

    performance = reads.model_performance_of([m.id for m in page])

    assert [(p.name, p.version) for p in performance] == [(m.name, m.version) for m in page]
    assert {p.jobs for p in performance} == {0}
    assert reads.model_performance_of([]) == []


def cli(
    url: str, *args: str, command: str = "models"
) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PYNOMALY_DATABASE_URL": url, "PYNOMALY_ENVIRONMENT": "test"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pynomaly_workers.cli", command, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return time.perf_counter() - started, done


def test_the_cli_lists_a_page_and_says_how_to_see_the_next(registry: Engine, pg_url: str) -> None:
    # When a person lists 2 versions of the names containing "fleet-12"
    _, human = cli(pg_url, "--match", "fleet-12", "--limit", "2", "--offset", "4")
    # Then they see the total and the command for the next page
    assert "versions 5-6 of 500; next page: pynomaly-workers models --match fleet-12 " in (
        human.stdout
    )
    assert human.stdout.rstrip().endswith("--limit 2 --offset 6")

    # When a machine asks for a page as JSON
    _, machine = cli(pg_url, "--json", "--limit", "50", "--offset", "50")
    listed = json.loads(machine.stdout)
    assert [(m["name"], m["version"]) for m in listed] == everything(registry)[50:100]
    assert listed[0]["performance"]["jobs"] == 0

    # and past the end, a person is told where the last page is
    _, past = cli(pg_url, "--offset", "20000")
    assert f"there are {TOTAL + 3}; the last page is --offset 10000" in past.stdout


def test_a_page_is_fast_with_ten_thousand_versions(
    registry: Engine, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # What the `models` command reads for one page: the versions, their performance
    # and the total (the command's own work, after Python has started)
    store, reads = SqlStore(registry), SqlReads(registry)
    figures: dict[str, float] = {}
    for label, filters in {
        "first page": {},
        "last page": {"offset": TOTAL - 50},
        "--match": {"match": "fleet-12"},
    }.items():
        figures[f"query ms, {label}"] = median_ms(lambda f=filters: read_page(store, reads, f))
    # The whole command as a person runs it, interpreter start-up included
    for label, args in {
        "cli s, models --json --limit 50": ("--json", "--limit", "50"),
        "cli s, models --json --limit 50 --match fleet-12": ("--json", "--match", "fleet-12"),
    }.items():
        figures[label] = round(min(cli(pg_url, *args)[0] for _ in range(3)), 3)
    # The floor every command pays: Python, its imports and one query
    floor = min(cli(pg_url, "--json", "--limit", "1", command="jobs")[0] for _ in range(3))
    figures["cli s, jobs --json --limit 1 (start-up floor)"] = round(floor, 3)
    with capsys.disabled():
        print(f"\n10,003 versions: {json.dumps(figures)}")
    assert all(v < 250 for k, v in figures.items() if k.startswith("query")), figures


def read_page(store: SqlStore, reads: SqlReads, filters: dict[str, Any]) -> None:
    page = store.list_models(limit=50, **filters)
    reads.model_performance_of([m.id for m in page])
    store.count_models(match=filters.get("match"))


def median_ms(work: Any, *, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1_000)
    return round(statistics.median(times), 1)
