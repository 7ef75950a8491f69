"""The settings and adapters a command works with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from pynomaly_workers.cli.output import fail

if TYPE_CHECKING:
    from pynomaly_workers.services.context import Adapters
    from pynomaly_workers.settings import Settings


def load_settings() -> Settings:
    from pynomaly_workers.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"PYNOMALY_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        fail(f"invalid settings: {problems}")


def load_adapters() -> Adapters:
    from pynomaly_workers.bootstrap import get_adapters

    load_settings()
    return get_adapters()
