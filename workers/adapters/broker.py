"""The broker transports the workers name: Redis (:mod:`.redis_transport`, a message taken
off its queue and recorded in flight in one atomic step) and the embedded file-system
broker, which never hands out a half-written message. Both deliver only well-formed
envelopes (:mod:`.envelope`)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from typing import Any

from kombu.transport import filesystem as kombu_filesystem
from kombu.utils.json import dumps

from pynomaly_workers.adapters.envelope import (
    DATA_ERRORS,
    MalformedMessage,
    decode_envelope,
    envelope_problem,
)
from pynomaly_workers.adapters.redis_transport import Channel, QoS, Transport, acknowledge_all

__all__ = [
    "FILESYSTEM_TRANSPORT",
    "TRANSPORT",
    "Channel",
    "FilesystemTransport",
    "MalformedMessage",
    "QoS",
    "Transport",
    "acknowledge_all",
    "decode_envelope",
    "envelope_problem",
]

log = logging.getLogger(__name__)

TRANSPORT = "pynomaly_workers.adapters.redis_transport:Transport"
FILESYSTEM_TRANSPORT = "pynomaly_workers.adapters.broker:FilesystemTransport"


class FilesystemChannel(kombu_filesystem.Channel):
    """Kombu's file-system channel writes a message in place while consumers may already
    move it away, so a consumer can read an empty file and crash. Messages are written to
    a staging file and renamed into the queue folder, which is atomic on POSIX."""

    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        folder = self.data_folder_out
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        descriptor, staging = tempfile.mkstemp(dir=os.path.dirname(folder), suffix=".part")
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(dumps(payload).encode())
        os.replace(staging, os.path.join(folder, name))

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        while True:
            try:
                return super()._get(queue)
            except DATA_ERRORS as exc:
                log.error("dropped a malformed message from %s: %s", queue, exc)


class FilesystemTransport(kombu_filesystem.Transport):
    """``filesystem://`` with :class:`FilesystemChannel`."""

    Channel = FilesystemChannel
