"""``python -m pynomaly_workers.cli``: the same as the ``pynomaly-workers`` script."""

from pynomaly_workers.cli import main

main()
