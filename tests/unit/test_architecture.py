"""The dependency rule and "nothing at import", checked on the source itself."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "pynomaly_workers"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any level (lazy imports inside functions count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / "workers" / folder).rglob("*.py"))


@pytest.mark.parametrize("path", python_files("services"), ids=lambda p: p.name)
def test_services_depend_on_ports_not_adapters(path: Path) -> None:
    adapters = {m for m in imported_modules(path) if m.startswith(f"{PACKAGE}.adapters")}
    assert adapters == set(), f"{path.name} imports adapters {adapters}; use a port"


@pytest.mark.parametrize("path", python_files("domain"), ids=lambda p: p.name)
def test_the_domain_is_pure(path: Path) -> None:
    allowed_own = (f"{PACKAGE}.domain", f"{PACKAGE}.contract")
    third_party = {m.split(".")[0] for m in imported_modules(path)} - set(sys.stdlib_module_names)
    assert third_party <= {"numpy", PACKAGE}, f"{path.name} imports {third_party}"
    own = {m for m in imported_modules(path) if m.startswith(PACKAGE)}
    assert all(m.startswith(allowed_own) for m in own), f"{path.name} imports {own}"


def test_the_dependency_check_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pynomaly_workers.adapters.sources import X\n")
    assert imported_modules(module) == {f"{PACKAGE}.adapters.sources"}


IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import celery._state
import pynomaly_workers
found = pkgutil.walk_packages(pynomaly_workers.__path__, "pynomaly_workers.")
names = sorted(m.name for m in found)
# Alembic runs migrations/ as scripts under its own context, never as imports.
for name in names:
    if not name.endswith("__main__") and ".migrations" not in name:
        importlib.import_module(name)
from pynomaly_workers import settings, celery_app, metrics
print(json.dumps({
    "modules": len(names),
    "apps": len(celery._state._apps),
    "settings_read": settings.get_settings.cache_info().currsize,
    "app_built": celery_app.get_app.cache_info().currsize,
    "metrics_built": metrics.get_metrics.cache_info().currsize,
}))
"""


def test_importing_every_module_has_no_effect(tmp_path: Path) -> None:
    # Given a fresh process in an empty folder, with settings that would create folders
    env = {"PATH": "/usr/bin:/bin", "PYNOMALY_HOME": str(tmp_path / "home")}

    # When every module of the package is imported
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )

    # Then no app, settings, metrics, file or folder came into being
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["modules"] > 30
    assert (report["apps"], report["settings_read"]) == (0, 0)
    assert (report["app_built"], report["metrics_built"]) == (0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
