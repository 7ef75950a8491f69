"""PYNOMALY_SOURCE_ROOTS: local ``source`` files are confined by default; any path only by
the documented opt-in; the JSON-list format; the wiring into the source reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.domain.errors import InvalidSource
from pynomaly_workers.settings import ANY_SOURCE_PATH, Settings
from tests.factories import write_csv


def test_unset_roots_confine_sources_to_the_home_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYNOMALY_SOURCE_ROOTS", raising=False)

    settings = Settings(home=tmp_path / "home", environment="test")

    assert settings.resolved_source_roots == ((tmp_path / "home" / "data").resolve(),)


def test_roots_are_read_as_a_json_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYNOMALY_SOURCE_ROOTS", json.dumps([str(tmp_path / "a"), "/srv/b"]))

    settings = Settings(home=tmp_path / "home", environment="test")

    assert settings.resolved_source_roots == ((tmp_path / "a").resolve(), Path("/srv/b"))


def test_roots_are_resolved_through_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")

    settings = Settings(home=tmp_path, environment="test", source_roots=(tmp_path / "link",))

    assert settings.resolved_source_roots == ((tmp_path / "real").resolve(),)


def test_an_empty_list_is_refused_with_the_choices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty list used to mean "any path"; it must not silently keep meaning that.
    monkeypatch.setenv("PYNOMALY_SOURCE_ROOTS", "[]")

    with pytest.raises(ValidationError, match="PYNOMALY_SOURCE_ROOTS is an empty list") as info:
        Settings(home=tmp_path, environment="test")
    assert ANY_SOURCE_PATH in str(info.value)


def _csv(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_csv(path, [[1.0, 2.0]])


def _outside_file(tmp_path: Path) -> Path:
    return _csv(tmp_path / "elsewhere" / "x.csv")


def test_by_default_a_worker_reads_no_file_outside_its_data_folder(tmp_path: Path) -> None:
    # Given default settings and a readable CSV outside PYNOMALY_HOME/data
    settings = Settings(home=tmp_path / "home", environment="test")
    inside = _csv(tmp_path / "home" / "data" / "in.csv")
    adapters = bootstrap(settings)
    try:
        # When / Then the wired reader refuses it, naming the allowed folder and the fix
        with pytest.raises(InvalidSource, match="outside the allowed folders") as info:
            adapters.sources.describe(str(_outside_file(tmp_path)))
        assert str((tmp_path / "home" / "data").resolve()) in str(info.value)
        assert "PYNOMALY_SOURCE_ROOTS" in str(info.value)
        # and reads a file inside it
        assert adapters.sources.describe(str(inside)).n_rows == 1
    finally:
        adapters.close()


def test_the_any_path_opt_in_reads_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYNOMALY_SOURCE_ROOTS", ANY_SOURCE_PATH)
    adapters = bootstrap(Settings(home=tmp_path / "home", environment="test"))
    try:
        assert adapters.sources.describe(str(_outside_file(tmp_path))).n_rows == 1
    finally:
        adapters.close()


def test_roots_that_are_not_a_json_list_are_refused_with_the_format(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must be a JSON list of folders"):
        Settings(home=tmp_path, environment="test", source_roots="/data")
