"""The delivery retry budget rides out a known outage, whatever the random draws."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.delivery import RetryPolicy


@given(st.integers(min_value=1, max_value=20))
def test_each_delay_is_between_half_and_the_whole_step(attempt: int) -> None:
    policy = RetryPolicy()
    step = min(policy.max_s, policy.base_s * 2 ** (attempt - 1))
    for _ in range(50):
        assert step / 2 <= policy.delay(attempt) <= step


def test_default_budget_rides_out_a_15_second_outage() -> None:
    # attempts 1..5 wait at least 0.5 + 1 + 2 + 4 + 8 s before the 6th and last attempt
    assert RetryPolicy().guaranteed_s() == 15.5
    worst = min(sum(RetryPolicy().delay(a) for a in range(1, 6)) for _ in range(2000))
    assert worst >= 15.5
