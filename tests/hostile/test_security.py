"""Security cases: authentication, authorisation, SSRF, header and path injection,
XML entity expansion, and what never reaches the logs. Real servers and sockets; the
broker where the path writes to it."""

from __future__ import annotations

import asyncio
import base64
import email
import io
import logging
import re
import uuid
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.eparcours.deliver import build_service
from adapters.eparcours.guard import EndpointPolicy, EndpointRefused
from adapters.eparcours.registry import Status, SubscriptionRecord
from adapters.eparcours.sender import RestHookSender
from adapters.eparcours.topics import BY_ID
from adapters.fhir_api.app import ApiContext, create_app
from adapters.fhir_api.auth import TokenRegistry
from adapters.ingress import Ingress
from adapters.mssante.mail import build_mail
from adapters.mssante.mailbox import mailbox_root, store_message
from adapters.mssante.xdm import build_xdm
from bus.asgi import serve
from bus.deadletter import header_text
from bus.producer import EventProducer
from bus.settings import ApiClient, EparcoursSettings, Settings
from schemas.cases import case_id
from schemas.envelope import Envelope
from schemas.samples import sample_bundle
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem
from tests.hostile.support import Client, hl7, rejected_records, start_listener, stop_listener

ROOT = Path(__file__).parents[2]
GOOD = "tok-sec-good-9f3e1c7a"
RESTRICTED = "tok-sec-restricted-41d0"
EXPIRED = "tok-sec-expired-77b2"
PATIENT = ("LEFÈVRE", "Lefèvre", "Hélène", "Noëlle", "256030331004597", "258030319004510")


# ---------------------------------------------------------------- authentication (HTTP)


@pytest.fixture
async def api(catalog_applied: str, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    producer = EventProducer(catalog_applied, settings.kafka, timeout_s=5)
    clients = [
        ApiClient(id="good", token=GOOD),
        # a GP software that may only publish for one practitioner it does not host here
        ApiClient(
            id="cabinet-b", token=RESTRICTED, event_types=["referral.*"],
            identifiers=["810099999999", "1999999999"],
        ),
        # a revoked client: its old token was rotated, only the new digest is configured
        ApiClient(id="rotated", token_sha256="0" * 64),
        # a vendor token past its rotation date
        ApiClient(id="lapsed", token=EXPIRED, expires=datetime(2026, 1, 1, tzinfo=UTC)),
    ]  # fmt: skip
    ctx = ApiContext(Ingress(producer), TokenRegistry(clients), 200_000, "http://127.0.0.1/fhir")
    async with serve(create_app(ctx), "127.0.0.1", 0) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    await producer.stop()


def _post(http: httpx.AsyncClient, body: bytes, authorization: str | None):
    headers = {"content-type": "application/fhir+json"}
    if authorization is not None:
        headers["authorization"] = authorization
    return http.post("/fhir/$process-message", content=body, headers=headers)


BAD_AUTH = [
    ("missing", None),
    ("empty", ""),
    ("basic scheme", "Basic " + base64.b64encode(b"good:" + GOOD.encode()).decode()),
    ("bearer without token", "Bearer"),
    ("wrong token", "Bearer tok-sec-good-9f3e1c7b"),
    ("token prefix", "Bearer " + GOOD[:-1]),
    ("token with suffix", "Bearer " + GOOD + "x"),
    ("revoked (rotated) token", "Bearer tok-the-old-rotated-token"),
    ("token in another scheme name", GOOD),
    ("expired token", "Bearer " + EXPIRED),
]


@pytest.mark.parametrize(("case", "authorization"), BAD_AUTH, ids=[c[0] for c in BAD_AUTH])
async def test_bad_credentials_get_401_with_www_authenticate(api, case, authorization) -> None:
    resp = await _post(api, orjson.dumps(sample_bundle("referral.requested")), authorization)
    assert resp.status_code == 401, case
    assert resp.headers["www-authenticate"].startswith("Bearer realm=")
    out = resp.json()
    assert out["resourceType"] == "OperationOutcome" and out["issue"][0]["code"] == "security"
    metrics = await api.get("/metrics", headers={"authorization": authorization or ""})
    assert metrics.status_code == 401


async def test_expired_token_is_told_it_expired_with_rfc6750_invalid_token(api) -> None:
    resp = await _post(api, orjson.dumps(sample_bundle("referral.requested")), f"Bearer {EXPIRED}")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="carebus", error="invalid_token"'
    diagnostics = resp.json()["issue"][0]["diagnostics"]
    assert "expired at 2026-01-01T00:00:00+00:00" in diagnostics and EXPIRED not in resp.text
    missing = await _post(api, orjson.dumps(sample_bundle("referral.requested")), None)
    assert missing.headers["www-authenticate"] == 'Bearer realm="carebus"'


async def test_the_good_token_still_works_and_scheme_is_case_insensitive(api) -> None:
    body = orjson.dumps(sample_bundle("expertise.requested"))
    assert (await _post(api, body, f"bearer {GOOD}")).status_code == 202


async def test_publishing_for_another_organisation_is_403_and_kept(api, catalog_applied) -> None:
    raw = orjson.dumps(sample_bundle("referral.requested"))  # sender RPPS 810003456125
    resp = await _post(api, raw, f"Bearer {RESTRICTED}")
    assert resp.status_code == 403
    issue = resp.json()["issue"][0]
    assert issue["code"] == "forbidden" and "810003456125" in issue["diagnostics"]
    kept = await rejected_records(catalog_applied, [raw])
    assert header_text(kept[raw].headers, "rejected_sender") == "client:cabinet-b"
    other_type = orjson.dumps(sample_bundle("expertise.requested"))
    resp = await _post(api, other_type, f"Bearer {RESTRICTED}")
    assert resp.status_code == 403 and "may not publish expertise" in resp.text


# ---------------------------------------------------------------------------- SSRF


POLICY = EndpointPolicy.from_settings(
    EparcoursSettings(
        allowed_hosts=[
            "hooks.example.org", "localhost", "169.254.169.254", "127.0.0.1", "10.1.2.3",
            "0.0.0.0", "::", "::1", "::ffff:169.254.169.254", "2130706433", "0x7f000001",
            "127.1", "*.nip.test",
        ],
        allow_http=True,
        allowed_networks=[],
    )
)  # fmt: skip

STATIC_REFUSALS = [
    "file:///etc/passwd",
    "gopher://hooks.example.org:70/_GET%20/",
    "dict://hooks.example.org:11211/stat",
    "ftp://hooks.example.org/x",
    "ldap://hooks.example.org/",
    "http://169.254.169.254/latest/meta-data/",  # allow-listed by mistake: still never
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://127.0.0.1/hook",
    "http://10.1.2.3/hook",
    "http://0.0.0.0/hook",
    "http://[::]/hook",
    "http://[::1]/hook",
    "http://hooks.example.org@127.0.0.1/hook",  # credentials trick
    "http://user:pw@hooks.example.org/hook",
    "https://evil.example.com/hook",  # not on the allow-list
    "https://hooks.example.org.evil.example.com/hook",
    "https://nip.test/hook",  # "*.nip.test" means sub-domains only
    "http://[::1/hook",  # broken URL
    "",
]


@pytest.mark.parametrize("url", STATIC_REFUSALS)
def test_forbidden_endpoints_refused_at_subscription_time(url: str) -> None:
    with pytest.raises(EndpointRefused):
        POLICY.check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/hook",  # a name that resolves to loopback
        "http://2130706433/hook",  # decimal 127.0.0.1, resolved by the system
        "http://0x7f000001/hook",
        "http://127.1/hook",
    ],
)
async def test_names_resolving_to_private_addresses_refused_at_delivery(url: str) -> None:
    try:
        POLICY.check_url(url)
    except EndpointRefused:
        return  # refused even earlier: fine
    with pytest.raises(EndpointRefused, match=r"non-public|not a unicast|cannot resolve"):
        await POLICY.resolve(url)


async def test_allow_listed_private_network_is_allowed() -> None:
    """The guard does not over-block: loopback passes once an operator allows it."""
    policy = EndpointPolicy.from_settings(
        EparcoursSettings(
            allowed_hosts=["localhost"], allow_http=True, allowed_networks=["127.0.0.0/8", "::1"]
        )
    )
    target = await policy.resolve("http://localhost:8443/hook")
    assert target.ip in ("127.0.0.1", "::1") and target.host == "localhost"


class _Recorder:
    def __init__(self) -> None:
        self.hits: list[tuple[str, dict[str, str], bytes]] = []

    async def __call__(self, request: Request) -> Response:
        self.hits.append((request.url.path, dict(request.headers), await request.body()))
        return Response(status_code=200)


async def test_redirects_are_never_followed() -> None:
    """A subscriber's server answers 307 to an internal address: the bus does not go."""
    inner = _Recorder()
    inner_app = Starlette(routes=[Route("/{p:path}", inner, methods=["GET", "POST"])])

    async with serve(inner_app, "127.0.0.1", 0) as inner_port:

        async def redirect(_: Request) -> Response:
            target = f"http://127.0.0.1:{inner_port}/latest/meta-data"
            return Response(status_code=307, headers={"location": target})

        outer = Starlette(routes=[Route("/hook", redirect, methods=["POST"])])
        async with serve(outer, "127.0.0.1", 0) as port:
            policy = EndpointPolicy.from_settings(
                EparcoursSettings(
                    allowed_hosts=["127.0.0.1"], allow_http=True, allowed_networks=["127.0.0.0/8"]
                )
            )
            sender = RestHookSender(policy, timeout_s=5)
            record = SubscriptionRecord(
                id="s-redirect", owner="p", topic=BY_ID["stay"].url,
                endpoint=f"http://127.0.0.1:{port}/hook", secret="k" * 24, status=Status.ACTIVE,
            )  # fmt: skip
            result = await sender.post(record, {"resourceType": "Bundle"})
            await sender.aclose()
    assert not result.ok and result.status == 307
    assert inner.hits == [], "the redirect target was called"


# ------------------------------------------------------ mail header and path injection


HOSTILE = "Evil\r\nBcc: victim@evil.example\r\nContent-Type: text/html\r\n\r\n<script>"
TRAVERSAL = ["../../../etc/passwd", "/etc/shadow", "..\\..\\boot.ini", "a\x00b.pdf", "CON.txt"]


def _hostile_item() -> tuple[WorkItem, dict]:
    event_id = str(uuid.uuid4())
    bundle = sample_bundle("referral.requested", event_id=event_id)
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "DocumentReference":
            att = res["content"][0]["attachment"]
            att["title"] = HOSTILE + TRAVERSAL[0]
            att["contentType"] = 'text/plain; charset="utf-8\r\nBcc: victim@evil.example"'
            res["description"] = HOSTILE
    env = Envelope(
        id=event_id, type="referral.requested", source="urn:carebus:test",
        subject=case_id("referral.requested", bundle) + "\r\nBcc: victim@evil.example",
        data=orjson.dumps(bundle),
    )  # fmt: skip
    recipient = Recipient(
        RecipientKind.PRACTITIONER, "10012345673", "dr.b@cardio.mssante.fr", "performer", HOSTILE
    )
    return WorkItem(event=env, channel=Channel.MSSANTE, recipient=recipient, due=None), bundle


def test_crlf_in_display_names_subjects_titles_and_types_injects_no_header() -> None:
    item, bundle = _hostile_item()
    msg = build_mail(
        item, bundle, sender="carebus@x.mssante.fr", now=datetime(2025, 3, 17, tzinfo=UTC),
        read_receipt_to="carebus@x.mssante.fr", product_ref="NIL\r\nBcc: victim@evil.example",
    )  # fmt: skip
    raw = msg.as_bytes()
    assert not re.search(rb"(?im)^bcc:", raw), "an injected Bcc header line"
    parsed = email.message_from_bytes(raw, policy=policy.default)
    for part in parsed.walk():
        for name, value in part.items():
            assert "\n" not in value and "\r" not in value, (name, value)
            assert name.lower() != "bcc"
        filename = part.get_filename()
        if filename is not None:
            assert re.fullmatch(r"[A-Za-z0-9._-]{1,100}", filename), filename
    assert parsed["To"].addresses[0].addr_spec == "dr.b@cardio.mssante.fr"
    html = [p for p in parsed.walk() if p.get_content_type() == "text/html"]
    assert not html, "a hostile value opened a new MIME part"


def _zip_members(msg_bytes: bytes) -> list[str]:
    parsed = email.message_from_bytes(msg_bytes, policy=policy.default)
    for part in parsed.walk():
        if part.get_filename() == "IHE_XDM.ZIP":
            return zipfile.ZipFile(io.BytesIO(part.get_content())).namelist()
    raise AssertionError("no IHE_XDM.ZIP")


def test_xdm_members_stay_inside_the_zip_whatever_the_titles() -> None:
    item, bundle = _hostile_item()
    msg = build_mail(
        item, bundle, sender="carebus@x.mssante.fr", now=datetime(2025, 3, 17, tzinfo=UTC),
        read_receipt_to="carebus@x.mssante.fr",
    )  # fmt: skip
    for name in _zip_members(msg.as_bytes()):
        assert not name.startswith(("/", "\\")) and ".." not in name.split("/"), name
        assert "\x00" not in name and "\\" not in name and ":" not in name, name


@pytest.mark.parametrize(
    "address",
    [
        "../../../tmp/x@evil.fr",
        "/etc/passwd@evil.fr",
        "a\x00b@evil.fr",
        "..@evil.fr",
        "a@../../evil",
        "a@evil.fr/../../x",
        "a@evil.fr\r\nBcc: b@c.fr",
        ".hidden@evil.fr",
    ],
)
def test_mailbox_file_names_cannot_escape_the_mailbox(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValueError, match="mailbox"):
        store_message(tmp_path, address, b"Message-ID: <x@y>\r\n\r\nhello")
    root = mailbox_root(tmp_path)
    assert [p for p in tmp_path.rglob("*") if root not in p.parents and p != root] == []


# ------------------------------------------------------------ XML entity expansion

_XML_PARSE = re.compile(
    r"\b(?:ET|ElementTree|etree|minidom|pulldom|sax|expat|lxml)\s*\.\s*"
    r"(?:fromstring|parse|XML|iterparse|parseString|XMLParser|XMLPullParser|make_parser|"
    r"ParserCreate)\b|^\s*(?:import|from)\s+(?:lxml|xml\.dom|xml\.sax(?!\.saxutils\b)|xmltodict)\b",
    re.MULTILINE,
)
#: xml.sax.saxutils (escape, quoteattr) only escapes text for XML CareBus writes: allowed
#: where XML is parsed from a file CareBus wrote itself (not from a network peer)
_TRUSTED_XML = {"bus/embedded.py"}


def test_no_untrusted_xml_is_parsed_without_defusedxml() -> None:
    """CareBus only *writes* XML (XDM METADATA.XML, ebRIM). If a future change parses
    XML from a peer (MHD ITI-41 responses, XDM received by mail), it must go through
    defusedxml: this test names the new call site instead of letting billion-laughs in."""
    found = []
    for package in ("adapters", "bus", "schemas", "processors"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text(encoding="utf-8")
            if rel in _TRUSTED_XML or "defusedxml" in text:
                continue
            found += [f"{rel}: {m.group(0).strip()}" for m in _XML_PARSE.finditer(text)]
    assert found == [], found


def test_entity_declarations_in_values_are_escaped_in_xdm_metadata() -> None:
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;"><!ENTITY xxe SYSTEM "file:///etc/passwd">]>&lol2;&xxe;'
    )
    bundle = sample_bundle("referral.requested")
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "DocumentReference":
            res["content"][0]["attachment"]["title"] = laughs
            res["description"] = laughs
        if res["resourceType"] == "Patient":
            res["name"][0]["family"] = laughs
    data = build_xdm(bundle, submission_key="k-1")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        metadata = next(zf.read(n) for n in zf.namelist() if n.upper().endswith("METADATA.XML"))
    assert b"<!DOCTYPE" not in metadata and b"<!ENTITY" not in metadata
    assert b"&lol" not in metadata.replace(b"&amp;lol", b"")
    # our own output parses with the standard parser, without any DTD to expand
    import xml.etree.ElementTree as ET

    ET.fromstring(metadata)  # bytes built by CareBus in this test


# ------------------------------------------------------------------------------ logs


async def test_tokens_and_patient_data_never_reach_the_logs(
    api, catalog_applied: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # as `carebus -v` runs it: aiokafka's own DEBUG log prints whole record values (the
    # CLI pins it to WARNING; never enable it in production)
    caplog.set_level(logging.WARNING, logger="aiokafka")
    # HTTP: good and bad tokens, accepted and refused messages naming the patient
    await _post(api, orjson.dumps(sample_bundle("expertise.requested")), f"Bearer {GOOD}")
    await _post(api, b"{}", "Bearer tok-leaked-guess-77")
    bad = sample_bundle("referral.requested")
    bad["entry"][0]["resource"]["eventCoding"]["code"] = "nope"
    await _post(api, orjson.dumps(bad), f"Bearer {GOOD}")
    # MLLP: an accepted A01 and a refused A08, both naming Mme LEFÈVRE Hélène
    listener = await start_listener(catalog_applied, settings, idle_timeout_s=10)
    try:
        client = await Client.to(listener)
        await client.send(hl7("adt_a01_utf8.hl7"), hl7("adt_a08_unsupported.hl7"))
        codes = [(await client.ack())["code"], (await client.ack())["code"]]
        await client.close()
    finally:
        await stop_listener(listener)
    assert codes == ["AA", "AR"]
    text = caplog.text + " ".join(str(r.args) for r in caplog.records)
    for secret in (GOOD, "tok-leaked-guess-77", RESTRICTED):
        assert secret not in text, "a bearer token was logged"
    for word in PATIENT:
        assert word not in text, f"patient data in the logs: {word}"
    assert "rejected input" in caplog.text  # the refusals were logged, without the data


async def test_subscription_secrets_and_hook_credentials_never_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def failing(_: Request) -> Response:
        return Response(status_code=500)

    hook = Starlette(routes=[Route("/hook", failing, methods=["POST"])])
    ep = EparcoursSettings(
        allowed_hosts=["127.0.0.1"], allow_http=True, allowed_networks=["127.0.0.0/8"],
        max_attempts=1, timeout_s=3,
    )  # fmt: skip
    service = await build_service(settings.model_copy(update={"eparcours": ep}), None)
    secret, hook_token = "hmac-secret-0e5a1f9b2c", "hook-bearer-51c0d2"
    async with serve(hook, "127.0.0.1", 0) as port:
        record = SubscriptionRecord(
            id="s-logs", owner="p", topic=BY_ID["stay"].url,
            endpoint=f"http://127.0.0.1:{port}/hook", secret=secret,
            headers=(f"Authorization: Bearer {hook_token}",), status=Status.ACTIVE,
        )  # fmt: skip
        await service.store.save(record)
        outcome = await service.notify("s-logs", "item-logs", sample_bundle("discharge.planned"))
        await asyncio.sleep(0)
    await service.sender.aclose()
    assert outcome.status == "failed"
    for value in (secret, hook_token):
        assert value not in caplog.text and value not in outcome.detail
    shown = settings.model_copy(update={"eparcours": ep})
    assert "hmac-secret" not in repr(shown)
