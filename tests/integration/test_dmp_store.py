"""The record port over real HTTP: DmpAdapter → the embedded DMP-like store (ITI-65/67/68).

`RecordPortContract` states what any record behind the DMP adapter must do; it only
looks at the record through ITI-67/68, so the same class can run against another MHD
Document Recipient/Responder by subclassing it with another `record` fixture.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.responses import Response

from adapters.bundle_view import BundleView
from adapters.delivery import DeliveryWorker, RetryPolicy
from adapters.dmp.client import DmpAdapter
from adapters.dmp.store import create_store_app, embedded_store, list_documents, store_path
from bus.asgi import serve
from bus.producer import EventProducer
from bus.settings import DmpSettings, Settings
from schemas.builders import build_referral_requested
from schemas.cases import case_id
from schemas.codes import INS_NIR
from schemas.envelope import Envelope
from schemas.sample_data import PATIENT
from schemas.samples import referral_info, sample_bundle
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem

INS = "258030319004510"
FHIR = {"content-type": "application/fhir+json"}


def work_item(bundle: dict, event_id: str) -> WorkItem:
    etype = BundleView(bundle).event
    assert etype is not None
    env = Envelope(
        id=event_id,
        type=etype.value,
        source="urn:test",
        subject=case_id(etype, bundle),
        data=orjson.dumps(bundle),
    )
    return WorkItem(env, Channel.DMP, Recipient(RecipientKind.RECORD, INS))


def discharge(event_id: str = "e-dmp-1") -> dict:
    return sample_bundle("discharge.completed", event_id=event_id)


def letter(event_id: str) -> dict:
    """A discharge whose letter is its own document (the samples share one letter id)."""
    bundle = discharge(event_id)
    for e in bundle["entry"]:
        if e["resource"]["resourceType"] == "DocumentReference":
            e["resource"]["masterIdentifier"]["value"] = f"urn:uuid:{uuid.uuid4()}"
    return bundle


@dataclass
class Record:
    base_url: str
    adapter: DmpAdapter
    http: httpx.AsyncClient

    async def search(self, **params: str) -> dict:
        params.setdefault("patient.identifier", f"{INS_NIR}|{INS}")
        resp = await self.http.get(f"{self.base_url}/DocumentReference", params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()


class RecordPortContract:
    async def test_files_once_even_when_delivered_twice(self, record: Record) -> None:
        bundle = discharge()
        item = work_item(bundle, "e-dmp-1")
        first = await record.adapter.deliver(item, bundle)
        second = await record.adapter.deliver(item, bundle)
        assert first.status == "sent" and "filed" in first.detail
        assert second.status == "sent" and "already filed" in second.detail
        found = await record.search()
        assert found["total"] == 1

    async def test_iti67_finds_it_by_patient_ins_type_and_date(self, record: Record) -> None:
        bundle = discharge()
        await record.adapter.deliver(work_item(bundle, "e-dmp-2"), bundle)
        hit = await record.search(type="http://loinc.org|11490-0", date="ge2020-01-01")
        assert hit["type"] == "searchset" and hit["total"] == 1
        doc = hit["entry"][0]["resource"]
        assert doc["subject"]["identifier"] == {"system": INS_NIR, "value": INS}
        assert doc["masterIdentifier"]["value"].startswith("urn:oid:2.25.")
        assert (await record.search(type="http://loinc.org|96349-6"))["total"] == 0
        assert (await record.search(date="ge2999-01-01"))["total"] == 0
        assert (await record.search(**{"patient.identifier": f"{INS_NIR}|1"}))["total"] == 0

    async def test_iti67_pages_through_every_document_once(self, record: Record) -> None:
        """A patient with more documents than a page: the `next` links reach each once (the
        soak's invariant found 500 of 721 letters when the search had no paging)."""
        for n in range(5):
            bundle = letter(f"e-dmp-page-{n}")  # five letters, not one letter five times
            await record.adapter.deliver(work_item(bundle, f"e-dmp-page-{n}"), bundle)
        page = await record.search(_count="2")
        seen: list[str] = []
        pages = 0
        while True:
            pages += 1
            seen += [e["resource"]["id"] for e in page.get("entry", [])]
            nxt = [x["url"] for x in page.get("link", []) if x["relation"] == "next"]
            if not nxt:
                break
            resp = await record.http.get(nxt[0])
            assert resp.status_code == 200, resp.text
            page = resp.json()
        assert len(seen) == len(set(seen)) == 5 and pages == 3, seen

    async def test_iti68_returns_the_exact_bytes(self, record: Record) -> None:
        bundle = discharge()
        letter = BundleView(bundle).documents()[0]
        await record.adapter.deliver(work_item(bundle, "e-dmp-3"), bundle)
        doc = (await record.search())["entry"][0]["resource"]
        att = doc["content"][0]["attachment"]
        resp = await record.http.get(f"{record.base_url}/{att['url']}")
        assert resp.status_code == 200
        assert resp.content == letter.content
        assert resp.headers["content-type"].split(";")[0] == letter.mime_type
        assert att["hash"] == base64.b64encode(hashlib.sha1(resp.content).digest()).decode()

    async def test_opposition_is_skipped_and_nothing_filed(self, record: Record) -> None:
        info = replace(referral_info(), patient=replace(PATIENT, sharing_opposition=True))
        bundle = build_referral_requested(info, event_id="e-dmp-opp")
        outcome = await record.adapter.deliver(work_item(bundle, "e-dmp-opp"), bundle)
        assert outcome.status == "skipped" and "opposed" in outcome.detail
        assert (await record.search())["total"] == 0

    async def test_events_without_documents_are_skipped(self, record: Record) -> None:
        bundle = sample_bundle("discharge.planned", event_id="e-dmp-plan")
        outcome = await record.adapter.deliver(work_item(bundle, "e-dmp-plan"), bundle)
        assert outcome.status == "skipped"

    async def test_bad_bundles_get_located_operation_outcomes(self, record: Record) -> None:
        post = record.http.post
        url = f"{record.base_url}/"
        resp = await post(url, content=b"{not json", headers=FHIR)
        assert resp.status_code == 400
        binary_only = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": {"resourceType": "Binary"}}],
        }
        resp = await post(url, content=orjson.dumps(binary_only), headers=FHIR)
        assert resp.status_code == 400
        assert resp.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.contentType"]
        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "fullUrl": "urn:uuid:1",
                    "request": {"method": "DELETE", "url": "Binary"},
                    "resource": {
                        "resourceType": "Binary",
                        "contentType": "text/plain",
                        "data": "aGk=",
                    },
                }
            ],
        }
        resp = await post(url, content=orjson.dumps(batch), headers=FHIR)
        assert resp.status_code == 422
        where = {e for i in resp.json()["issue"] for e in i.get("expression", [])}
        assert {"Bundle.type", "Bundle.entry[0].request.method"} <= where
        resp = await post(url, content=b"{}", headers={"content-type": "text/plain"})
        assert resp.status_code == 415


class TestEmbeddedStore(RecordPortContract):
    @pytest.fixture
    async def record(self, tmp_path: Path) -> AsyncIterator[Record]:
        app = create_store_app(tmp_path / "dmp" / "store.sqlite3", max_body_bytes=2_000_000)
        async with serve(app, "127.0.0.1", 0) as port, httpx.AsyncClient(timeout=10) as http:
            base = f"http://127.0.0.1:{port}"
            adapter = DmpAdapter(base, settings=DmpSettings(timeout_s=5))
            yield Record(base, adapter, http)
            await adapter.aclose()
        app.state.db.close()


# --- behaviour specific to the adapter and the embedded store ------------------------
class FlakyProxy:
    """Answers 500 (FHIR transient OperationOutcome) `failures` times, then forwards."""

    def __init__(self, app: Starlette, failures: int) -> None:
        self.app, self.failures, self.calls = app, failures, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.calls += 1
            if self.calls <= self.failures:
                body = {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "error", "code": "transient", "diagnostics": "disk busy"}
                    ],
                }
                resp = Response(orjson.dumps(body), 500, media_type="application/fhir+json")
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


@pytest.mark.kafka
async def test_a_failing_record_is_retried_then_filed(
    tmp_path: Path, catalog_applied: str, settings: Settings
) -> None:
    app = create_store_app(tmp_path / "store.sqlite3")
    proxy = FlakyProxy(app, failures=2)
    producer = EventProducer(catalog_applied, settings.kafka, timeout_s=5)
    async with serve(proxy, "127.0.0.1", 0) as port:
        adapter = DmpAdapter(f"http://127.0.0.1:{port}")
        worker = DeliveryWorker(adapter, producer, retry=RetryPolicy(max_attempts=4, base_s=0.01))
        bundle = discharge("e-dmp-flaky")
        outcome = await worker.handle(work_item(bundle, "e-dmp-flaky").envelope())
        await adapter.aclose()
    await producer.stop()
    assert outcome.status == "sent" and proxy.calls == 3
    assert app.state.db.count("DocumentReference") == 1
    app.state.db.close()


async def test_permanent_refusal_and_auth(tmp_path: Path) -> None:
    app = create_store_app(tmp_path / "store.sqlite3", token="s3cret-token", max_body_bytes=5000)
    bundle = discharge("e-dmp-auth")
    async with serve(app, "127.0.0.1", 0) as port:
        base = f"http://127.0.0.1:{port}"
        anonymous = DmpAdapter(base)
        outcome = await anonymous.deliver(work_item(bundle, "e-dmp-auth"), bundle)
        assert outcome.status == "failed" and not outcome.retry and "401" in outcome.detail
        await anonymous.aclose()
        big = DmpAdapter(base, settings=DmpSettings(token="s3cret-token"))
        outcome = await big.deliver(work_item(bundle, "e-dmp-auth"), bundle)
        assert outcome.status == "failed" and not outcome.retry and "413" in outcome.detail
        await big.aclose()
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"{base}/DocumentReference", params={"patient.identifier": INS})
            assert resp.status_code == 401
    app.state.db.close()


async def test_unreachable_record_is_transient() -> None:
    adapter = DmpAdapter("http://127.0.0.1:9", settings=DmpSettings(timeout_s=2))
    bundle = discharge("e-dmp-down")
    outcome = await adapter.deliver(work_item(bundle, "e-dmp-down"), bundle)
    await adapter.aclose()
    assert outcome.status == "failed" and outcome.retry


async def test_embedded_store_from_settings_and_summary(tmp_path: Path) -> None:
    cfg = Settings(data_dir=tmp_path, dmp=DmpSettings(store_port=0))
    async with embedded_store(cfg) as base:
        adapter = DmpAdapter(base, settings=cfg.dmp)
        bundle = discharge("e-dmp-sum")
        assert (await adapter.deliver(work_item(bundle, "e-dmp-sum"), bundle)).status == "sent"
        async with httpx.AsyncClient() as http:
            summary = (await http.get(f"{base}/_summary", params={"ins": INS})).json()
        await adapter.aclose()
    assert [d["type_code"] for d in summary] == ["11490-0"]
    docs = list_documents(store_path(cfg), INS)
    assert docs[0].title and docs[0].size > 0 and docs[0].master_identifier.startswith("urn:oid:")
    assert store_path(cfg) == tmp_path / "dmp" / "store.sqlite3"
    exposed = Settings(data_dir=tmp_path, dmp=DmpSettings(store_host="0.0.0.0"))
    with pytest.raises(ValueError, match=r"without dmp\.token"):
        async with embedded_store(exposed):
            pass
