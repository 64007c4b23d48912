"""`carebus status`: what the bus holds and how far behind each consumer group is."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from bus.settings import KafkaSettings
from schemas.topics import CATALOG


@dataclass(frozen=True, slots=True)
class TopicFill:
    topic: str
    records: int  # end offset minus start offset, summed over partitions


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    topic: str
    lag: int


async def status(bootstrap: str, kafka: KafkaSettings) -> tuple[list[TopicFill], list[GroupLag]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.client_options())
    probe = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **kafka.client_options()
    )
    await admin.start()
    await probe.start()
    try:
        existing = set(await admin.list_topics())
        names = [t.name for t in CATALOG if t.name in existing]
        meta = await admin.describe_topics(names)
        tps = [TopicPartition(t["topic"], p["partition"]) for t in meta for p in t["partitions"]]
        ends = await probe.end_offsets(tps) if tps else {}
        starts = await probe.beginning_offsets(tps) if tps else {}
        fills = [
            TopicFill(name, sum(ends[tp] - starts[tp] for tp in tps if tp.topic == name))
            for name in names
        ]
        lags: list[GroupLag] = []
        for group, _kind in await admin.list_consumer_groups():
            offsets = await admin.list_consumer_group_offsets(group)
            per_topic: dict[str, int] = {}
            for tp, meta_off in offsets.items():
                if tp in ends and meta_off.offset >= 0:
                    per_topic[tp.topic] = per_topic.get(tp.topic, 0) + ends[tp] - meta_off.offset
            lags += [GroupLag(group, t, lag) for t, lag in sorted(per_topic.items())]
        return fills, sorted(lags, key=lambda g: (g.group, g.topic))
    finally:
        await probe.stop()
        await admin.close()
