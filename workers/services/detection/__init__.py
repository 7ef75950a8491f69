"""Detection: score jobs, persist their anomalies, record their outcome.

``batch`` sorts deliveries into the three use cases, each in its own module: ``small``
(micro-batched inline jobs), ``in_process`` (large inline payloads, one-chunk files) and
``fan_out`` (files cut into chunks scored across the workers). ``scoring`` is what they
share; ``outcomes`` what they return.
"""

from pynomaly_workers.services.detection.batch import (
    detect_batch,
    record_limits,
    run_detection,
)
from pynomaly_workers.services.detection.fan_out import ChunkDone, run_chunk
from pynomaly_workers.services.detection.outcomes import (
    DetectMessage,
    Failed,
    FannedOut,
    JobAlreadyFailed,
    Outcome,
    Succeeded,
)
from pynomaly_workers.services.detection.scoring import score_rows

__all__ = [
    "ChunkDone",
    "DetectMessage",
    "Failed",
    "FannedOut",
    "JobAlreadyFailed",
    "Outcome",
    "Succeeded",
    "detect_batch",
    "record_limits",
    "run_chunk",
    "run_detection",
    "score_rows",
]
