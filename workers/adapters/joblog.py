"""Job lines written to Python logging, on the ``pynomaly_workers.jobs`` logger at INFO:
the worker's handlers make them text or JSON (``observability.JsonFormatter`` adds the
line's fields to the JSON object)."""

from __future__ import annotations

import logging

from pynomaly_workers.domain.joblog import JOB_LOGGER, JobLine


class LoggingJobLog:
    """Writes each finished job's line (the line object is the record's message, so its
    text is only rendered by a handler that prints it)."""

    enabled = True

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(JOB_LOGGER)

    def finished(self, line: JobLine) -> None:
        logger = self._logger
        # makeRecord + handle is what logger.info does, less finding the caller's frame
        # (no format here prints it): a line per job is on the hot path.
        if logger.isEnabledFor(logging.INFO):
            logger.handle(logger.makeRecord(logger.name, logging.INFO, "", 0, line, (), None))
