"""Errors the edges translate into answers: transient (retry later) vs permanent."""

from __future__ import annotations


class BrokerUnavailable(Exception):
    """The broker did not acknowledge a write in time: the caller must keep its message
    and retry (HTTP 503, HL7 AE). The write may still land later; event-id dedup makes the
    retry harmless."""
