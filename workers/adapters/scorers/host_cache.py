"""What a host keeps of model versions between loads, shared by its worker processes.

* **Forest arrays** (``forest/<artifact sha256>/``): an IsolationForest's node arrays
  (``ForestScorer.ARRAYS``, and the C walk's layout of them, ``WALK_ARRAYS``, which a
  process derives from the others where a folder written before it lacks it) back to
  back in one file (``arrays.bin``, each at a 64-byte aligned offset that ``meta.json``
  gives with its dtype and shape), memory-mapped read-only by every pool process that
  loads the version: one copy in the page cache for the whole host, one open and one map
  per load, no unpickling. (Folders written before, one ``.npy`` file per array, are
  still read.) Written once, by whichever process loads the version first on this host,
  into a temporary folder renamed into place (atomic); a folder is named by the
  artifact's sha256, which the store checked when the artifact was read, and never
  changes.
* **Calibrations** (``calibration/<key>.json``): the measured seconds per call of each
  backend at each batch size, keyed by what the cost depends on (algorithm, features,
  training rows, parameters, backends), not by the version: a thousand models of one
  shape are measured once per host.

The folder belongs to the worker's user (``PYNOMALY_HOME/model-cache``): whoever can
write to it can change what the workers compute, as with the database.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pynomaly_workers.adapters.scorers.forest import ForestScorer

log = logging.getLogger(__name__)

_META = "meta.json"
_ARRAYS = "arrays.bin"
_ALIGN = 64


class HostModelCache:
    """Per-host files of model versions (see the module)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def forest(self, sha256: str) -> ForestScorer | None:
        """The saved forest of artifact ``sha256``, memory-mapped; None if not saved."""
        folder = self.root / "forest" / sha256
        try:
            meta = json.loads((folder / _META).read_text())
            layout = meta.get("arrays")
            if layout is not None:
                mapped = np.memmap(folder / _ARRAYS, dtype=np.uint8, mode="r")
                arrays = {
                    name: np.ndarray(
                        tuple(spec["shape"]),
                        dtype=np.dtype(spec["dtype"]),
                        buffer=mapped,
                        offset=int(spec["offset"]),
                    )
                    for name, spec in (
                        (n, layout[n])
                        for n in (*ForestScorer.ARRAYS, *ForestScorer.WALK_ARRAYS)
                        if n in layout or n in ForestScorer.ARRAYS
                    )
                }
            else:  # a folder of the earlier layout: one .npy file per array
                arrays = {
                    name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                    for name in ForestScorer.ARRAYS
                }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if folder.exists():
                log.warning("unreadable host cache %s (%s); loading from the store", folder, exc)
            return None
        return ForestScorer.from_arrays(arrays, meta)

    def save_forest(self, sha256: str, forest: ForestScorer) -> None:
        """Save ``forest`` for the other processes of this host (first writer wins)."""
        final = self.root / "forest" / sha256
        if final.exists():
            return
        arrays, meta = forest.to_arrays()

        def write(folder: Path) -> None:
            layout: dict[str, dict[str, Any]] = {}
            offset = 0
            with open(folder / _ARRAYS, "wb") as handle:
                for name, array in arrays.items():
                    data = np.ascontiguousarray(array)
                    handle.write(b"\0" * (-offset % _ALIGN))
                    offset += -offset % _ALIGN
                    layout[name] = {
                        "dtype": data.dtype.str,
                        "shape": list(data.shape),
                        "offset": offset,
                    }
                    handle.write(data.tobytes())
                    offset += data.nbytes
            (folder / _META).write_text(json.dumps({**meta, "arrays": layout}))

        self._publish(final, write)

    def calibration(self, key: str) -> dict[str, Any] | None:
        """The calibration saved under ``key``, or None."""
        path = self.root / "calibration" / f"{key}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data

    def save_calibration(self, key: str, data: dict[str, Any]) -> None:
        """Save a calibration under ``key`` (first writer wins)."""
        final = self.root / "calibration" / f"{key}.json"
        if final.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        descriptor, staging = tempfile.mkstemp(dir=final.parent, suffix=".part")
        with os.fdopen(descriptor, "w") as handle:
            json.dump(data, handle)
        os.replace(staging, final)

    def _publish(self, final: Path, write: Any) -> None:
        """Fill a fresh folder with ``write`` and rename it to ``final``: readers see
        the whole folder or none of it. A lost race leaves the winner's folder."""
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".part-"))
        try:
            write(staging)
            os.rename(staging, final)
        except OSError as exc:
            if not final.exists():
                log.warning("could not save %s to the host cache: %s", final.name, exc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
