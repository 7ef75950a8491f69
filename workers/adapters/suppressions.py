"""Each model's live suppression rules as a worker process last read them, for
``PYNOMALY_SUPPRESSION_TTL_SECONDS``: a micro-batch of one-record jobs pays a dictionary
lookup, not a query, and a rule added or removed applies within that time. The rest of
:class:`~pynomaly_workers.domain.ports.Suppressions` goes straight to the store."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from threading import Lock

from pynomaly_workers.domain.ports import SuppressionStore
from pynomaly_workers.domain.suppression import RuleDraft, SuppressionRule

MAX_MODELS = 10_000
"""Model names remembered at most; past this the memory starts over (as model refs do)."""


class CachedSuppressions:
    """:class:`~pynomaly_workers.domain.ports.Suppressions` over a store, with each
    model's live rules remembered for ``ttl_seconds`` (0: read every time)."""

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
        self._rules: dict[str, tuple[float, tuple[SuppressionRule, ...]]] = {}
        self._lock = Lock()

    def rules_of(self, model_name: str, *, now: datetime) -> Sequence[SuppressionRule]:
        read_at = self._monotonic()
        with self._lock:
            cached = self._rules.get(model_name)
        if cached is not None and read_at - cached[0] < self.ttl_seconds:
            return cached[1]
        rules = tuple(self.store.live_rules(model_name, now=now))
        with self._lock:
            if len(self._rules) >= MAX_MODELS:
                self._rules.clear()
            self._rules[model_name] = (read_at, rules)
        return rules

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

    def live_rules(self, model_name: str, *, now: datetime) -> list[SuppressionRule]:
        return self.store.live_rules(model_name, now=now)

    def _forget(self, model_name: str) -> None:
        """This process sees its own change at once; others within the TTL."""
        with self._lock:
            self._rules.pop(model_name, None)
