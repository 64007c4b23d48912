"""Prometheus metrics, one registry for the process (served at /metrics).

Labels carry event types, channels and codes: never a patient, a name or a free text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECEIVED = Counter(
    "carebus_ingress_received_total",
    "Inbound messages accepted and written to the bus",
    ["channel", "event_type"],
    registry=REGISTRY,
)
REJECTED = Counter(
    "carebus_ingress_rejected_total",
    "Inbound messages refused (kept on care.rejected-input)",
    ["channel", "code"],
    registry=REGISTRY,
)
UNAVAILABLE = Counter(
    "carebus_ingress_broker_unavailable_total",
    "Inbound messages answered 503/AE because the broker did not acknowledge",
    ["channel"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "carebus_ingress_duplicates_total",
    "Retransmitted inbound messages acknowledged again",
    ["channel"],
    registry=REGISTRY,
)
ACK_SECONDS = Histogram(
    "carebus_ingress_ack_seconds",
    "Time from a complete inbound message to its answer",
    ["channel"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OPEN_CONNECTIONS = Gauge(
    "carebus_mllp_open_connections",
    "Open MLLP connections",
    registry=REGISTRY,
)
