"""The pynomaly-workers command is assembled from its modules with every command."""

from __future__ import annotations

import subprocess
import sys

import click

from pynomaly_workers.cli import main

COMMANDS = {
    "worker",
    "beat",
    "flower",
    "migrate",
    "train",
    "train-many",
    "detect",
    "jobs",
    "evaluate",
    "models",
    "anomalies",
    "incidents",
    "datasets",
    "drift",
    "maintenance",
    "health",
    "demo",
    "subscriptions",
    "deliveries",
    "suppress",
}
SUBCOMMANDS = {
    "models": {"alias", "rollback", "history", "compare", "threshold"},
    "datasets": {"add", "list"},
    "maintenance": {"run", "history"},
    "anomalies": {"label"},
    "incidents": {"show", "ack", "resolve", "label"},
    "subscriptions": {"add", "list", "remove", "test"},
    "deliveries": {"replay"},
    "suppress": {"add", "list", "remove"},
}


def test_every_command_and_subcommand_is_assembled() -> None:
    assert set(main.commands) == COMMANDS
    for group, names in SUBCOMMANDS.items():
        command = main.commands[group]
        assert isinstance(command, click.Group)
        assert set(command.commands) == names


def test_the_package_runs_with_python_dash_m() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pynomaly_workers.cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: python -m pynomaly_workers.cli [OPTIONS] COMMAND")
    assert all(f"  {name} " in done.stdout for name in COMMANDS)
