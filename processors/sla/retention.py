"""When a case may be forgotten: the bound on a worker's memory, pure.

The processors keep two entries per case in faust tables (in memory, and in compacted
changelog topics): its parties (who is who, written by every inbound event, SLA-tracked
or not: an A01 alone makes one) and its SLA state. Without a rule they would live for
ever, so a worker's memory and its recovery time would grow with every case a territory
has ever had. The rule: a case is forgotten once nothing is pending on it and its last
inbound event is older than the retention (`[sla] retention`, 30 days by default: as long
as the event topics keep the events themselves). A later event on a forgotten case
starts it afresh, like a case never seen.

The last inbound event is known through `CaseParties.touched` (epoch seconds, rounded
up so that it is never earlier than the event was processed). Rewriting
the parties on every event only to move that date would double the changelog writes, so
the date moves only when it is older than `slack(retention)` (an eighth of it): it may
be up to that much behind the true last event, and `verdict` waits for retention + slack
after it. A case is thus forgotten between `retention` and `retention + slack` (plus one
sweep interval) after its last inbound event, never before.

Entries written before the date existed (touched = 0), and SLA states without a parties
entry, get a "touch" first: they are dated at the first sweep, not purged blindly.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Literal

from processors.routing.parties import CaseParties
from processors.sla.policy import Delay
from processors.sla.state import CaseState

Verdict = Literal["keep", "touch", "purge"]


def length(retention: Delay) -> timedelta:
    """A retention as elapsed time (days are calendar days here, never business days)."""
    return timedelta(days=retention.days) + retention.time


def slack(retention: Delay) -> timedelta:
    """How stale `touched` may get before an event rewrites it."""
    return length(retention) / 8


def stamp(now: datetime) -> int:
    """The `touched` value for an event processed at `now`: rounded up, never earlier."""
    return math.ceil(now.timestamp())


def stale(touched: int, now: datetime, retention: Delay) -> bool:
    """True when an inbound event must rewrite the parties only to move their date."""
    return touched <= 0 or now.timestamp() - touched >= slack(retention).total_seconds()


def verdict(
    parties: CaseParties | None, state: CaseState | None, now: datetime, retention: Delay
) -> Verdict:
    """What the sweep does with one case: keep it, date it, or forget it."""
    if parties is None and state is None:
        return "keep"  # already forgotten (a purge crossed the sweep)
    if state is not None and state.pending:
        return "keep"  # a deadline will fire: the case is needed until then
    if parties is None or parties.touched <= 0:
        return "touch"
    quiet = now.timestamp() - parties.touched
    if quiet >= (length(retention) + slack(retention)).total_seconds():
        return "purge"
    return "keep"
