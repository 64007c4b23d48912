"""Is a message's own time believable? Pure: the caller passes the bus clock.

A Bundle.timestamp (HL7: MSH-7) far ahead of the bus clock means the sender's clock or
time zone is wrong; taking it would date the case in the future and shift every SLA
reading of it. A very old one is most often a queue flushed long after an outage, which
must not silently open or escalate cases as if new: an operator replays it on purpose
(`carebus send` does not apply this rule). Both limits come from `[ingress]` settings.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.outcome import Issue, IssueCode


def _span(delta: timedelta) -> str:
    seconds = abs(delta.total_seconds())
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def message_time_issue(
    timestamp: str,
    now: datetime,
    *,
    max_skew: timedelta,
    max_age: timedelta | None,
    where: str = "Bundle.timestamp",
) -> Issue | None:
    """The reason to refuse a message dated `timestamp` when the bus clock says `now`.

    None when the time is plausible, or unreadable (the validators judge the format).
    """
    try:
        stamp = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return None
    if stamp.tzinfo is None:
        return None  # an instant without offset is refused by validation already
    ahead = stamp - now
    if ahead > max_skew:
        return Issue(
            IssueCode.VALUE,
            f"message time {stamp.astimezone(UTC).isoformat(timespec='seconds')} is "
            f"{_span(ahead)} ahead of the bus clock (tolerance {_span(max_skew)}): check the "
            "sending system's clock and time zone",
            where,
        )
    if max_age is not None and -ahead > max_age:
        return Issue(
            IssueCode.VALUE,
            f"message time {stamp.astimezone(UTC).isoformat(timespec='seconds')} is "
            f"{_span(ahead)} old (limit {_span(max_age)}): an old message is not taken as a "
            "new event; ask the coordinator to replay it if it still matters",
            where,
        )
    return None
