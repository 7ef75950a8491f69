"""The check that refuses to start a worker on libraries that lack an internal it uses."""

from __future__ import annotations

import pytest
from celery_batches import Batches
from kombu.transport import redis as kombu_redis

from pynomaly_workers.internals import MissingInternals, check_internals, missing_internals


def test_the_installed_libraries_have_every_internal_relied_on() -> None:
    assert missing_internals() == []
    check_internals()


def test_a_missing_kombu_hook_stops_the_worker_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(kombu_redis.Channel, "_brpop_start")

    with pytest.raises(MissingInternals) as raised:
        check_internals()

    text = str(raised.value)
    assert "kombu.transport.redis.Channel._brpop_start" in text
    assert "kombu 5.7" in text  # what is installed and what was tested
    assert "constraints.txt" in text  # and what to do


def test_a_celery_batches_buffer_renamed_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Batches.__init__

    def renamed(self: Batches, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)

    monkeypatch.setattr(Batches, "__init__", renamed)  # assigns none of the buffers

    assert "celery_batches.Batches._buffer" in missing_internals()
