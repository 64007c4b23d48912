"""Strimzi rendering: every catalog topic as a KafkaTopic, one KafkaUser per role whose
ACLs cover exactly what the role reads and writes (pure, no broker)."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from bus.cli import app
from bus.strimzi import INBOUND, render, role_access
from schemas.codes import EventType
from schemas.topics import CATALOG, DELIVERY_STATUS, REJECTED_INPUT, SUBSCRIPTIONS, topic_for


def docs(name: str, **kw: object) -> list[dict]:
    return list(yaml.safe_load_all(render(**kw)[name]))  # type: ignore[arg-type]


def user(role: str, **kw: object) -> dict:
    (u,) = [d for d in docs("users.yaml", **kw) if d["metadata"]["name"] == f"carebus-{role}"]
    return u


def topic_ops(u: dict) -> dict[str, set[str]]:
    return {
        a["resource"]["name"]: set(a["operations"])
        for a in u["spec"]["authorization"]["acls"]
        if a["resource"]["type"] == "topic" and a["resource"]["patternType"] == "literal"
    }


def test_every_catalog_topic_and_changelog_is_a_kafka_topic() -> None:
    topics = {d["metadata"]["name"]: d for d in docs("topics.yaml", replicas=3)}
    expected = {t.name for t in CATALOG} | {
        "carebus-processors-sla-cases-changelog",
        "carebus-processors-sla-parties-changelog",
    }
    assert set(topics) == expected
    for spec in CATALOG:
        d = topics[spec.name]
        assert d["apiVersion"] == "kafka.strimzi.io/v1beta2" and d["kind"] == "KafkaTopic"
        assert d["metadata"]["labels"]["strimzi.io/cluster"] == "carebus"
        assert d["spec"]["topicName"] == spec.name
        assert d["spec"]["partitions"] == spec.partitions
        assert d["spec"]["replicas"] == 3
        cfg = d["spec"]["config"]
        assert cfg["cleanup.policy"] == spec.cleanup_policy
        assert cfg["retention.ms"] == spec.retention_ms
        assert cfg["min.insync.replicas"] == 2
        for k, v in spec.extra_config:
            assert str(cfg[k]) == v


def test_cluster_replicas_and_isr_are_parameters() -> None:
    (first, *_) = docs("topics.yaml", cluster="prod-kafka", replicas=5, min_insync_replicas=3)
    assert first["metadata"]["labels"]["strimzi.io/cluster"] == "prod-kafka"
    assert first["spec"]["replicas"] == 5
    assert first["spec"]["config"]["min.insync.replicas"] == 3


def test_min_isr_above_replicas_is_refused() -> None:
    try:
        render(replicas=2, min_insync_replicas=3)
    except ValueError as exc:
        assert "min.insync.replicas" in str(exc)
    else:
        raise AssertionError("min.insync.replicas > replicas was accepted")


def test_one_user_per_role_with_chosen_authentication() -> None:
    users = docs("users.yaml", auth="scram-sha-512")
    names = [u["metadata"]["name"] for u in users]
    assert names == [f"carebus-{a.role}" for a in role_access()]
    assert {"carebus-ingress", "carebus-processors", "carebus-adapters"} <= set(names)
    assert "carebus-dashboard" in names
    for u in users:
        assert u["kind"] == "KafkaUser"
        assert u["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert u["spec"]["authorization"]["type"] == "simple"


def test_ingress_writes_inbound_topics_and_rejected_input_only() -> None:
    ops = topic_ops(user("ingress"))
    writes = {name for name, o in ops.items() if "Write" in o}
    inbound = {topic_for(e) for e in EventType if e.inbound}
    assert inbound == {t.name for t in INBOUND}
    assert writes == inbound | {REJECTED_INPUT.name, SUBSCRIPTIONS.name}
    assert "care.delivery.mssante" not in ops  # ingress never touches delivery work


def test_adapters_read_delivery_topics_and_write_status() -> None:
    ops = topic_ops(user("adapters"))
    for t in ("care.delivery.mssante", "care.delivery.dmp", "care.delivery.eparcours"):
        assert {"Read", "Describe"} <= ops[t] and "Write" not in ops[t]
    assert "Write" in ops[DELIVERY_STATUS.name]
    assert "Write" in ops["care.deadletter"]
    assert not any("Write" in ops.get(t.name, set()) for t in INBOUND)
    groups = [
        a["resource"]
        for a in user("adapters")["spec"]["authorization"]["acls"]
        if a["resource"]["type"] == "group"
    ]
    # the delivery workers' consumer groups are carebus-delivery-<channel>
    assert groups == [{"type": "group", "name": "carebus-delivery-", "patternType": "prefix"}]


def test_processors_read_inbound_write_delivery_and_own_their_changelogs() -> None:
    u = user("processors", app_id="carebus-processors")
    ops = topic_ops(u)
    for t in INBOUND:
        assert "Read" in ops[t.name] and "Write" not in ops[t.name]
    for t in ("care.delivery.mssante", "care.sla.events", "care.sla.ticks"):
        assert "Write" in ops[t]
    assert {"Read", "Write"} <= ops["care.sla.ticks"]
    prefixed = [
        (a["resource"]["type"], a["resource"]["name"], a["operations"])
        for a in u["spec"]["authorization"]["acls"]
        if a["resource"].get("patternType") == "prefix"
    ]
    assert ("topic", "carebus-processors", ["All"]) in prefixed
    assert ("group", "carebus-processors", ["Read", "Describe"]) in prefixed


def test_dashboard_reads_everything_and_writes_only_replay_targets() -> None:
    ops = topic_ops(user("dashboard"))
    assert set(ops) == {t.name for t in CATALOG}
    writable = {name for name, o in ops.items() if "Write" in o}
    # a dead letter goes back to the topic it came from: inbound events, work items,
    # delivery statuses; never the dead-letter topic itself or the state topics
    assert "care.referral.events" in writable and "care.delivery.mssante" in writable
    assert not writable & {"care.deadletter", "care.directory", "care.subscriptions"}
    assert all({"Describe", "Read"} <= o for o in ops.values())


def test_cli_renders_the_same_files(tmp_path) -> None:
    result = CliRunner().invoke(app, ["topics", "render", "--strimzi", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    expected = render()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == expected
    assert CliRunner().invoke(app, ["topics", "render"]).exit_code != 0  # a format is needed
