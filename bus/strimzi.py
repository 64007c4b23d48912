"""Strimzi resources rendered from the topic catalog: `carebus topics render --strimzi`.

One source of truth: the topics are `schemas.topics.CATALOG` plus the faust changelogs
the processors declare (`processors.app.internal_topics`); the users are one `KafkaUser`
per CareBus role, whose ACLs are derived from what each role reads and writes (below),
so a topic added to the catalog reaches the cluster and the right roles by re-rendering.

Pure: plain dicts, then YAML text; writing files is the CLI's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from schemas.topics import (
    CATALOG,
    DEAD_LETTER,
    DELIVERY_DMP,
    DELIVERY_EPARCOURS,
    DELIVERY_MSSANTE,
    DELIVERY_STATUS,
    DIRECTORY,
    REFERRAL_EVENTS,
    REJECTED_INPUT,
    SLA_TICKS,
    SUBSCRIPTIONS,
    TopicSpec,
)

API_VERSION = "kafka.strimzi.io/v1beta2"
#: topics carrying events an outside producer publishes (what ingress writes)
INBOUND = tuple(t for t in CATALOG if any(e.inbound for e in t.event_types))
DELIVERY = (DELIVERY_MSSANTE, DELIVERY_DMP, DELIVERY_EPARCOURS)
#: what the processors produce: every topic but the inbound ones and those the edges own
PROCESSED = tuple(
    t for t in CATALOG if t not in INBOUND and t not in (REJECTED_INPUT, DIRECTORY, SUBSCRIPTIONS)
)
Auth = Literal["tls", "scram-sha-512"]


@dataclass(frozen=True)
class RoleAccess:
    """What one CareBus role does on Kafka (every role also loads `care.subscriptions`)."""

    role: str
    description: str
    reads: tuple[TopicSpec, ...] = ()
    writes: tuple[TopicSpec, ...] = ()
    groups: tuple[str, ...] = ()  # consumer group id prefixes
    own_prefixes: tuple[str, ...] = ()  # topics it creates and manages itself (faust)
    cluster_ops: tuple[str, ...] = ("IdempotentWrite",)
    manage_topics: bool = False  # create / alter any topic (provisioning)
    extra: dict[str, Any] = field(default_factory=dict)


def role_access(app_id: str = "carebus-processors") -> tuple[RoleAccess, ...]:
    """The roles of `carebus run ROLE` (and the operator's commands) and their topics."""
    return (
        RoleAccess(
            "ingress",
            "FHIR HTTP + HL7 MLLP listeners: write inbound events and refusals, "
            "manage e-parcours subscriptions",
            reads=(REFERRAL_EVENTS, SUBSCRIPTIONS),
            writes=(*INBOUND, REJECTED_INPUT, SUBSCRIPTIONS),
        ),
        RoleAccess(
            "processors",
            "faust routing and SLA agents",
            reads=(*INBOUND, DELIVERY_STATUS, SLA_TICKS, DIRECTORY, SUBSCRIPTIONS),
            writes=PROCESSED,
            groups=(app_id,),
            own_prefixes=(app_id,),
        ),
        RoleAccess(
            "adapters",
            "outbound workers: MSSanté mail, shared record, e-parcours notifications",
            reads=(*DELIVERY, SUBSCRIPTIONS),
            writes=(DELIVERY_STATUS, DEAD_LETTER, SUBSCRIPTIONS),
            groups=("carebus-delivery-",),
        ),
        RoleAccess(
            "dashboard",
            "coordinator dashboard: reads every topic (cases, deadlines, failures) without a "
            "consumer group; its replay action writes a dead letter back to its origin topic",
            reads=tuple(CATALOG),
            writes=(*INBOUND, *DELIVERY, DELIVERY_STATUS),
        ),
        RoleAccess(
            "operator",
            "carebus topics apply | status | replay | directory import (the provisioning job)",
            reads=tuple(CATALOG),
            writes=tuple(CATALOG),
            groups=("carebus-",),
            cluster_ops=("IdempotentWrite", "Describe"),
            manage_topics=True,
        ),
    )


def _config_value(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


def kafka_topic(
    spec: TopicSpec, *, cluster: str, replicas: int, min_insync_replicas: int
) -> dict[str, Any]:
    config: dict[str, Any] = {k: _config_value(v) for k, v in spec.config().items()}
    config["min.insync.replicas"] = min_insync_replicas
    return {
        "apiVersion": API_VERSION,
        "kind": "KafkaTopic",
        "metadata": {
            "name": spec.name,
            "labels": {"strimzi.io/cluster": cluster, "app.kubernetes.io/part-of": "carebus"},
        },
        "spec": {
            "topicName": spec.name,
            "partitions": spec.partitions,
            "replicas": replicas,
            "config": config,
        },
    }


def _acl(kind: str, name: str, ops: list[str], pattern: str = "literal") -> dict[str, Any]:
    return {
        "resource": {"type": kind, "name": name, "patternType": pattern},
        "operations": ops,
        "host": "*",
    }


def acls(access: RoleAccess) -> list[dict[str, Any]]:
    """Strimzi simple-authorization ACLs of a role, in a stable order."""
    out: list[dict[str, Any]] = []
    names = sorted({t.name for t in access.reads} | {t.name for t in access.writes})
    read = {t.name for t in access.reads}
    write = {t.name for t in access.writes}
    for name in names:
        ops = ["Describe"]
        if name in read:
            ops.append("Read")
        if name in write:
            ops.append("Write")
        if access.manage_topics:
            ops += ["Create", "DescribeConfigs", "AlterConfigs", "Alter"]
        out.append(_acl("topic", name, ops))
    for prefix in access.own_prefixes:
        out.append(_acl("topic", prefix, ["All"], "prefix"))
    for group in access.groups:
        out.append(_acl("group", group, ["Read", "Describe"], "prefix"))
    if access.cluster_ops:
        out.append(
            {"resource": {"type": "cluster"}, "operations": list(access.cluster_ops), "host": "*"}
        )
    return out


def kafka_user(access: RoleAccess, *, cluster: str, auth: Auth) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "KafkaUser",
        "metadata": {
            "name": f"carebus-{access.role}",
            "labels": {
                "strimzi.io/cluster": cluster,
                "app.kubernetes.io/part-of": "carebus",
                "app.kubernetes.io/component": access.role,
            },
            "annotations": {"carebus.fr/role": access.description},
        },
        "spec": {
            "authentication": {"type": auth},
            "authorization": {"type": "simple", "acls": acls(access)},
        },
    }


def all_topics(app_id: str = "carebus-processors") -> list[TopicSpec]:
    """The catalog, then the processors' faust changelog topics."""
    from processors.app import internal_topics  # faust-bound module: imported on use

    return [*CATALOG, *internal_topics(app_id)]


def render(
    *,
    cluster: str = "carebus",
    app_id: str = "carebus-processors",
    replicas: int = 3,
    min_insync_replicas: int = 2,
    auth: Auth = "tls",
) -> dict[str, str]:
    """File name → YAML text: `topics.yaml` (KafkaTopic) and `users.yaml` (KafkaUser)."""
    if not 1 <= min_insync_replicas <= replicas:
        raise ValueError(f"min.insync.replicas {min_insync_replicas} vs {replicas} replicas")
    topics = [
        kafka_topic(t, cluster=cluster, replicas=replicas, min_insync_replicas=min_insync_replicas)
        for t in all_topics(app_id)
    ]
    users = [kafka_user(a, cluster=cluster, auth=auth) for a in role_access(app_id)]
    header = (
        "# Generated by `carebus topics render --strimzi` from schemas/topics.py: do not edit.\n"
    )
    return {
        "topics.yaml": header + yaml.safe_dump_all(topics, sort_keys=False, allow_unicode=True),
        "users.yaml": header + yaml.safe_dump_all(users, sort_keys=False, allow_unicode=True),
    }
