"""Per-event CPU costs of the contract: envelope codec (µs)."""

from __future__ import annotations

from bench.stats import micro
from schemas.envelope import Envelope, new_event_id


def run(data: bytes) -> dict[str, list[float]]:
    env = Envelope(
        id=new_event_id(),
        type="referral.requested",
        source="urn:bench",
        subject="referral/urn:oid:1.2.3|42",
        data=data,
    )
    key, value, headers = env.encode()
    return {
        "envelope encode": micro(env.encode),
        "envelope decode": micro(lambda: Envelope.decode(key, value, headers)),
    }
