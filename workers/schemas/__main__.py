"""``python -m pynomaly_workers.schemas``: write the JSON Schema files."""

import sys

from pynomaly_workers.schemas import write

for written in write():
    sys.stdout.write(f"wrote {written}\n")
