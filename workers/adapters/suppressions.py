"""The live suppression rules as a worker process last read them, for
``PYNOMALY_SUPPRESSION_TTL_SECONDS``: a micro-batch of one-record jobs pays a dictionary
lookup, not a query, and a rule added or removed applies within that time. Every model's
live rules are read in one query (rules are few: people add them), so a worker serving a
thousand models asks once per TTL, not once per model. The rest of
:class:`~pynomaly_workers.domain.ports.Suppressions` goes straight to the store."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from threading import Lock

from pynomaly_workers.domain.ports import SuppressionStore
from pynomaly_workers.domain.suppression import RuleDraft, SuppressionRule


class CachedSuppressions:
    """:class:`~pynomaly_workers.domain.ports.Suppressions` over a store, with the live
    rules of every model remembered for ``ttl_seconds`` (0: read every time)."""

    def __init__(
        self,
        store: SuppressionStore,
        *,
        ttl_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self._monotonic = monotonic
        self._read: tuple[float, dict[str, tuple[SuppressionRule, ...]]] | None = None
        self._lock = Lock()

    def rules_of(self, model_name: str, *, now: datetime) -> Sequence[SuppressionRule]:
        at = self._monotonic()
        with self._lock:
            read = self._read
        if read is None or at - read[0] >= self.ttl_seconds:
            by_model: dict[str, list[SuppressionRule]] = {}
            for rule in self.store.live_rules(None, now=now):
                by_model.setdefault(rule.model_name, []).append(rule)
            read = (at, {name: tuple(rules) for name, rules in by_model.items()})
            with self._lock:
                self._read = read
        return read[1].get(model_name, ())

    def add_rule(self, draft: RuleDraft, *, now: datetime) -> SuppressionRule:
        rule = self.store.add_rule(draft, now=now)
        self._forget(draft.model_name)
        return rule

    def remove_rule(self, rule_id: int, *, by: str, now: datetime) -> SuppressionRule:
        rule = self.store.remove_rule(rule_id, by=by, now=now)
        self._forget(rule.model_name)
        return rule

    def list_rules(
        self, *, now: datetime, model: str | None = None, ended: bool = False
    ) -> list[SuppressionRule]:
        return self.store.list_rules(now=now, model=model, ended=ended)

    def live_rules(self, model_name: str | None, *, now: datetime) -> list[SuppressionRule]:
        return self.store.live_rules(model_name, now=now)

    def _forget(self, model_name: str) -> None:
        """This process sees its own change at once; others within the TTL."""
        del model_name
        with self._lock:
            self._read = None
