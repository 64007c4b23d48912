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

# end-to-end latency, measured from the inbound event's `carebus_ingress_time` header
# (the moment ingress accepted it), so it spans processes and includes the broker hops
_E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
ROUTING_LATENCY = Histogram(
    "carebus_e2e_routed_seconds",
    "Ingress accept to work item produced (routing), per channel",
    ["channel"],
    registry=REGISTRY,
    buckets=_E2E_BUCKETS,
)
DELIVERY_LATENCY = Histogram(
    "carebus_e2e_delivered_seconds",
    "Ingress accept to delivered (the channel adapter's success), per channel",
    ["channel"],
    registry=REGISTRY,
    buckets=_E2E_BUCKETS,
)
LATE_DEADLINES = Gauge(
    "carebus_sla_late_deadlines",
    "SLA deadlines still pending although their firing time is past (this worker)",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "carebus_consumer_lag",
    "Records behind the end of the topic (end offsets minus the group's committed offsets)",
    ["group", "topic"],
    registry=REGISTRY,
)
TOKEN_EXPIRY = Gauge(
    "carebus_api_token_expiry_timestamp_seconds",
    "When each API client's token stops being accepted (Unix time; alert ahead of it)",
    ["client"],
    registry=REGISTRY,
)
