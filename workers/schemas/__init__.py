"""The public tasks' keyword-argument schemas as JSON Schema files, for upstream
services in any language. Generated from ``pynomaly_workers.contract`` by
``python -m pynomaly_workers.schemas`` (``make schemas``); a test keeps them in step."""

from __future__ import annotations

import json
from pathlib import Path

from pynomaly_workers.contract import KWARGS_SCHEMAS

FOLDER = Path(__file__).resolve().parent


def schema_files() -> dict[Path, str]:
    """Each schema file's path and the text it must hold."""
    return {
        FOLDER / f"{task}.kwargs.json": json.dumps(schema, indent=2) + "\n"
        for task, schema in KWARGS_SCHEMAS.items()
    }


def write() -> list[Path]:
    """Write every schema file; return the paths written."""
    for path, text in schema_files().items():
        path.write_text(text)
    return list(schema_files())
