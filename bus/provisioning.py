"""Idempotent topic provisioning from the catalog (`carebus topics apply`).

Creates what is missing, raises partition counts that are too low (never lowers them:
Kafka cannot, and keys would move), and aligns topic configs. Running it twice
changes nothing the second time, which is what a deployment job needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bus.settings import KafkaSettings
from schemas.topics import CATALOG, TopicSpec


@dataclass(frozen=True, slots=True)
class Change:
    topic: str
    action: str  # created | partitions | config | unchanged | warning
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TopicState:
    name: str
    partitions: int
    replication: int
    config: dict[str, str]


def desired(spec: TopicSpec, kafka: KafkaSettings) -> tuple[int, dict[str, str]]:
    partitions = spec.partitions
    if kafka.partitions and spec.cleanup_policy == "delete" and spec.partitions > 3:
        partitions = kafka.partitions
    cfg = spec.config()
    if kafka.min_insync_replicas > 1:
        cfg["min.insync.replicas"] = str(kafka.min_insync_replicas)
    return partitions, cfg


async def describe(admin: AIOKafkaAdminClient, names: Iterable[str]) -> dict[str, TopicState]:
    names = list(names)
    existing = set(await admin.list_topics())
    present = [n for n in names if n in existing]
    if not present:
        return {}
    meta = await admin.describe_topics(present)
    configs = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, n) for n in present]
    )
    cfg_by_topic: dict[str, dict[str, str]] = {}
    for resp in configs:
        for res in resp.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            entries = res[4]
            cfg_by_topic[res[3]] = {e[0]: e[1] for e in entries if e[1] is not None}
    out = {}
    for t in meta:
        parts = t["partitions"]
        repl = len(parts[0]["replicas"]) if parts else 0
        out[t["topic"]] = TopicState(t["topic"], len(parts), repl, cfg_by_topic.get(t["topic"], {}))
    return out


async def apply_topics(
    bootstrap: str, kafka: KafkaSettings, catalog: Iterable[TopicSpec] = CATALOG
) -> list[Change]:
    catalog = list(catalog)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.client_options())
    await admin.start()
    try:
        state = await describe(admin, [s.name for s in catalog])
        changes: list[Change] = []
        to_create = []
        for spec in catalog:
            partitions, cfg = desired(spec, kafka)
            cur = state.get(spec.name)
            if cur is None:
                to_create.append(
                    NewTopic(spec.name, partitions, kafka.replication_factor, topic_configs=cfg)
                )
                changes.append(Change(spec.name, "created", f"{partitions} partitions"))
                continue
            done = False
            if cur.partitions < partitions:
                await admin.create_partitions({spec.name: NewPartitions(partitions)})
                changes.append(Change(spec.name, "partitions", f"{cur.partitions} → {partitions}"))
                done = True
            elif cur.partitions > partitions:
                changes.append(
                    Change(
                        spec.name,
                        "warning",
                        f"has {cur.partitions} partitions > {partitions}; "
                        "Kafka cannot shrink, left as is",
                    )
                )
            drift = {k: v for k, v in cfg.items() if cur.config.get(k) != v}
            if drift:
                await admin.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, spec.name, configs=cfg)]
                )
                changes.append(
                    Change(spec.name, "config", ", ".join(f"{k}={v}" for k, v in drift.items()))
                )
                done = True
            if not done:
                changes.append(Change(spec.name, "unchanged"))
        if to_create:
            await admin.create_topics(to_create)
            await _wait_for_leaders(admin, [t.name for t in to_create])
        return changes
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0
) -> None:
    """New partitions have no leader for a moment; clients started before would log
    NotLeaderForPartition errors, so provisioning returns only once all are led."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        meta = await admin.describe_topics(names)
        if all(
            t["error_code"] == 0
            and all(p["leader"] >= 0 for p in t["partitions"])
            and t["partitions"]
            for t in meta
        ):
            # metadata says "led" slightly before the leader serves offsets (KRaft
            # propagation): settle once, on creation only, instead of clients logging errors
            await asyncio.sleep(1.0)
            return
        await asyncio.sleep(0.1)


async def list_state(bootstrap: str, kafka: KafkaSettings) -> dict[str, TopicState]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.client_options())
    await admin.start()
    try:
        return await describe(admin, await admin.list_topics())
    finally:
        await admin.close()
