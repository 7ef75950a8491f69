"""The retry policy: exponential backoff with equal jitter, and the outage it outlasts."""

from __future__ import annotations

import pytest

from pynomaly_workers.domain.retries import backoff_cap, outage_tolerance, retry_delay


@pytest.mark.parametrize(
    ("retries", "maximum", "cap"),
    [(0, 300, 1), (1, 300, 2), (3, 300, 8), (8, 300, 256), (9, 300, 300), (2, 3, 3), (10**6, 5, 5)],
)
def test_the_cap_doubles_per_retry_up_to_the_maximum(retries: int, maximum: int, cap: int) -> None:
    assert backoff_cap(retries, maximum=maximum) == cap


@pytest.mark.parametrize("retries", [0, 1, 4, 12])
def test_a_delay_lies_in_the_upper_half_of_its_cap(retries: int) -> None:
    cap = backoff_cap(retries, maximum=60)
    assert retry_delay(retries, maximum=60, draw=0.0) == cap / 2
    assert retry_delay(retries, maximum=60, draw=1.0) == cap
    assert cap / 2 < retry_delay(retries, maximum=60, draw=0.3) < cap


def test_a_draw_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="draw must lie in"):
        retry_delay(1, maximum=60, draw=1.5)


@pytest.mark.parametrize(
    ("retry_max", "maximum", "seconds"),
    [(8, 300, 127.5), (8, 8, 23.5), (8, 2, 7.5), (0, 300, 0.0)],
)
def test_the_outage_every_job_outlasts(retry_max: int, maximum: int, seconds: float) -> None:
    assert outage_tolerance(retry_max, maximum=maximum) == seconds
