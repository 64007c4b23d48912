"""The FHIR HTTP ingress over real HTTP, writing to the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from adapters.fhir_api.app import ApiContext, create_app
from adapters.fhir_api.auth import ApiClient, TokenRegistry
from adapters.ingress import Ingress
from bus.asgi import serve
from bus.deadletter import header_text
from bus.producer import EventProducer
from bus.settings import Settings
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.samples import sample_bundle
from schemas.topics import REJECTED_INPUT, topic_for

pytestmark = pytest.mark.kafka

GP_TOKEN = "tok-gp-software-3f9a"
HOSPITAL_TOKEN = "tok-hospital-77aa"


def clients() -> list[ApiClient]:
    return [
        ApiClient(id="gp-software", token=GP_TOKEN, event_types=["referral.*", "expertise.*"]),
        # a hospital may publish stays only, and only for a FINESS it is not (to test 403)
        ApiClient(
            id="other-hospital",
            token=HOSPITAL_TOKEN,
            event_types=["admission.*", "discharge.*"],
            identifiers=["1999999999"],
        ),
    ]


async def start_api(bootstrap: str, settings: Settings) -> tuple:
    producer = EventProducer(bootstrap, settings.kafka, timeout_s=3)
    ingress = Ingress(producer)
    ctx = ApiContext(
        ingress=ingress,
        tokens=TokenRegistry(clients()),
        max_body_bytes=200_000,
        base_url="http://127.0.0.1/fhir",
    )
    return producer, create_app(ctx)


@pytest.fixture
async def api(catalog_applied: str, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    producer, app = await start_api(catalog_applied, settings)
    async with serve(app, "127.0.0.1", 0) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            yield client
    await producer.stop()


def post(
    client: httpx.AsyncClient,
    body: bytes,
    token: str | None = GP_TOKEN,
    ctype: str = "application/fhir+json",
):
    headers = {"content-type": ctype}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return client.post("/fhir/$process-message", content=body, headers=headers)


async def find_records(
    bootstrap: str, topic: str, pred, want: int = 1, timeout: float = 15
) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list = []
    try:
        end = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < end:
            batch = await consumer.getmany(timeout_ms=300)
            found += [r for rs in batch.values() for r in rs if pred(r)]
            if len(found) >= want and not batch:
                break
    finally:
        await consumer.stop()
    return found


class TestFhirIngress:
    async def test_valid_referral_is_written_then_202(self, api, catalog_applied: str) -> None:
        bundle = sample_bundle(EventType.REFERRAL_REQUESTED)
        raw = orjson.dumps(bundle)
        resp = await post(api, raw)
        assert resp.status_code == 202, resp.text
        event_id = resp.headers["x-carebus-event-id"]
        assert event_id == bundle["id"]
        recs = await find_records(
            catalog_applied, topic_for("referral.requested"), lambda r: r.value == raw
        )
        assert len(recs) == 1
        env = Envelope.decode(recs[0].key, recs[0].value, recs[0].headers)
        assert env.id == event_id and env.type == "referral.requested"
        assert env.subject.startswith("referral/") and recs[0].key == env.subject.encode()

    async def test_retransmission_acknowledged_once_written(self, api, catalog_applied) -> None:
        raw = orjson.dumps(sample_bundle(EventType.EXPERTISE_REQUESTED))
        first, second = await post(api, raw), await post(api, raw)
        assert first.status_code == second.status_code == 202
        assert "retransmission" in second.json()["issue"][0]["diagnostics"]
        recs = await find_records(
            catalog_applied, topic_for("expertise.requested"), lambda r: r.value == raw
        )
        assert len(recs) == 1

    @pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong-token", 401)])
    async def test_authentication_required(self, api, token, status) -> None:
        resp = await post(api, orjson.dumps(sample_bundle("referral.requested")), token=token)
        assert resp.status_code == status
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["resourceType"] == "OperationOutcome"

    async def test_client_cannot_publish_other_event_types(self, api, catalog_applied) -> None:
        raw = orjson.dumps(sample_bundle(EventType.DISCHARGE_PLANNED))
        resp = await post(api, raw, token=GP_TOKEN)
        assert resp.status_code == 403
        assert "may not publish discharge.planned" in resp.json()["issue"][0]["diagnostics"]

    async def test_hospital_cannot_announce_another_hospitals_discharge(self, api) -> None:
        raw = orjson.dumps(sample_bundle(EventType.DISCHARGE_PLANNED))
        resp = await post(api, raw, token=HOSPITAL_TOKEN)
        assert resp.status_code == 403
        assert "may not publish for" in resp.json()["issue"][0]["diagnostics"]

    async def test_wrong_media_type_415(self, api) -> None:
        resp = await post(api, b"MSH|^~\\&|x", ctype="text/plain")
        assert resp.status_code == 415
        assert "application/fhir+json" in resp.json()["issue"][0]["diagnostics"]

    async def test_oversize_413(self, api) -> None:
        resp = await post(api, b"{" + b" " * 300_000 + b"}")
        assert resp.status_code == 413
        assert resp.json()["issue"][0]["code"] == "too-long"

    async def test_malformed_json_400_kept_with_reason(self, api, catalog_applied) -> None:
        raw = b'{"resourceType": "Bundle", "type": "message", oops'
        resp = await post(api, raw)
        assert resp.status_code == 400
        recs = await find_records(catalog_applied, REJECTED_INPUT.name, lambda r: r.value == raw)
        assert len(recs) == 1
        assert header_text(recs[0].headers, "rejected_sender") == "client:gp-software"
        assert header_text(recs[0].headers, "rejected_channel") == "http"
        assert header_text(recs[0].headers, "rejected_reason")

    async def test_wrong_identifier_system_422_with_location(self, api) -> None:
        bundle = sample_bundle(EventType.REFERRAL_REQUESTED)
        for entry in bundle["entry"]:
            res = entry["resource"]
            if res["resourceType"] == "Practitioner":
                for ident in res.get("identifier", []):
                    ident["system"] = "http://example.org/not-rpps"
        resp = await post(api, orjson.dumps(bundle))
        assert resp.status_code == 422, resp.text
        issues = resp.json()["issue"]
        assert any(
            "Practitioner" in " ".join(i.get("expression", [])) or "RPPS" in i["diagnostics"]
            for i in issues
        )
        assert all(i.get("expression") for i in issues)

    async def test_illegal_referral_transition_409(self, api) -> None:
        requested = sample_bundle(EventType.REFERRAL_REQUESTED)
        rejected = sample_bundle(EventType.REFERRAL_REJECTED)
        completed = sample_bundle(EventType.REFERRAL_COMPLETED)
        assert (await post(api, orjson.dumps(requested))).status_code == 202
        assert (await post(api, orjson.dumps(rejected))).status_code == 202
        resp = await post(api, orjson.dumps(completed))
        assert resp.status_code == 409
        assert "rejected" in resp.json()["issue"][0]["diagnostics"]

    async def test_health_metadata_and_metrics(self, api) -> None:
        assert (await api.get("/healthz")).status_code == 200
        assert (await api.get("/readyz")).json() == {"status": "ready"}
        meta = (await api.get("/fhir/metadata")).json()
        assert meta["resourceType"] == "CapabilityStatement"
        events = {
            m["definition"].rsplit("/", 1)[1] for m in meta["messaging"][0]["supportedMessage"]
        }
        assert "referral.requested" in events and "sla.reminder" not in events
        assert (await api.get("/metrics")).status_code == 401
        m = await api.get("/metrics", headers={"authorization": f"Bearer {GP_TOKEN}"})
        assert m.status_code == 200 and "carebus_ingress_received_total" in m.text


async def test_broker_down_answers_503_and_never_202(settings: Settings) -> None:
    dead = "127.0.0.1:9"  # nothing listens there
    producer, app = await start_api(dead, settings)
    async with serve(app, "127.0.0.1", 0) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            resp = await post(client, orjson.dumps(sample_bundle("referral.requested")))
            assert resp.status_code == 503
            assert resp.headers["retry-after"] == "5"
            assert resp.json()["issue"][0]["code"] == "transient"
            bad = await post(client, b"{not json")
            assert bad.status_code == 503  # cannot keep the refusal either: sender must retry
            assert (await client.get("/readyz")).status_code == 503
    await producer.stop()


@hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=3000),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=12), inner, max_size=4)
            ),
            max_leaves=30,
        ).map(lambda v: orjson.dumps(v)),
        st.builds(
            lambda b, i, junk: b[:i] + junk + b[i + len(junk) :],
            st.just(orjson.dumps(sample_bundle("referral.requested"))),
            st.integers(0, 4000),
            st.binary(min_size=1, max_size=30),
        ),
    )
)
async def test_fuzzed_bodies_always_get_a_fhir_answer(api, body: bytes) -> None:
    resp = await post(api, body)
    assert resp.status_code in {202, 400, 403, 409, 413, 422}
    assert resp.headers["content-type"].startswith("application/fhir+json")
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"]
    if resp.status_code in (400, 422):
        assert all(i["severity"] == "error" and i["diagnostics"] for i in outcome["issue"])
