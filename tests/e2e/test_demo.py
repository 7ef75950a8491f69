"""`pynomaly-workers demo` on the embedded default: no servers, a real worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_finds_the_injected_anomalies_without_any_server(tmp_path: Path) -> None:
    # Given an environment with no PYNOMALY_* variable at all
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNOMALY_")}

    # When the demo runs in an empty folder
    result = subprocess.run(
        [sys.executable, "-m", "pynomaly_workers.cli", "demo", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    # Then it trained, detected through the file-system broker and found the anomalies
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    assert outcome["summary"]["status"] == "succeeded"
    assert outcome["summary"]["n_records"] == 2000
    assert outcome["recall"] >= 0.9
    assert (tmp_path / ".pynomaly" / "pynomaly.sqlite3").exists()
