"""The scripted day of `carebus demo`: each step acts through a public interface and
checks what the receivers observed (mailboxes on disk, the document store's API, the
platform's webhook, the bus's own topics)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiokafka import AIOKafkaConsumer

from bus.demo_data import (
    PATIENT,
    SECOND_PATIENT,
    adt,
    discharge_completed,
    expertise,
    invalid_hl7,
    referral,
)
from schemas.codes import EVENT_DISPLAY, DocType, EventType
from schemas.sample_data import CARDIOLOGIST as SPECIALIST
from schemas.sample_data import DERMATOLOGIST as EXPERT
from schemas.sample_data import GP
from schemas.topics import REJECTED_INPUT

if TYPE_CHECKING:
    from bus.demo import Demo, Webhook

E = EventType
COORDINATOR = "coordination@cpts-bords-allier.mssante.fr"


def show(et: EventType) -> str:
    return EVENT_DISPLAY[et]


async def play(d: Demo, hook: Webhook, hook_port: int) -> None:
    from bus.demo import hours, now_utc, wait_for
    from processors.directory.feed import publish
    from processors.directory.importers import from_bytes

    run = d.run_id
    mllp = d.running.ports["mllp"]
    now = now_utc()

    # 0. the territory's directory (Annuaire Santé extract) and an e-parcours subscriber
    imported = from_bytes((SAMPLES_DIR / "annuaire.json").read_bytes(), "annuaire.json")
    from bus.producer import EventProducer

    async with EventProducer(d.running.bootstrap, d.settings.kafka) as producer:
        count = await publish(imported.entries, producer)
    d.record(
        "directory import (Annuaire Santé FHIR extract)",
        f"{count} entries published",
        count > 0 and not imported.errors,
    )
    sub = await subscribe(d, hook_port)
    d.record(
        "Paaco-Globule subscribes to stays of territory 03",
        "handshake, then active",
        sub.get("status") == "active",
        sub.get("status", "refused"),
    )

    # 1. admission, then the 48 h notice
    visit1 = f"DEMO-{run}-1"
    a01 = await mllp_send(mllp, adt("A01", f"{run}-A01", patient=PATIENT, visit=visit1, now=now))
    a16 = await mllp_send(
        mllp,
        adt("A16", f"{run}-A16", patient=PATIENT, visit=visit1, now=now, planned=now + hours(50)),
    )
    d.record(
        "hospital sends A01 then A16 (discharge in 50 h) over MLLP",
        "AA for both",
        a01["code"] == a16["code"] == "AA",
        f"{a01['code']}/{a16['code']}",
    )
    stay1 = f"stay/urn:oid:1.2.250.1.211.12.1.2|{visit1}"

    async def gp_notice() -> list:
        return [
            m
            for m in d.mails(GP.mailbox, stay1, show(E.DISCHARGE_PLANNED))
            if PATIENT.ins in m.get_body(("plain",)).get_content()
        ]

    got = await wait_for(gp_notice, 30)
    d.record(
        "the GP's MSSanté mailbox",
        "a readable secure mail: who, which patient (INS), when",
        got,
        f"{len(got or [])} mail(s)",
    )

    # 2. a discharge announced only 20 h ahead
    visit2 = f"DEMO-{run}-2"
    late = await mllp_send(
        mllp,
        adt(
            "A16",
            f"{run}-A16L",
            patient=SECOND_PATIENT,
            visit=visit2,
            now=now,
            planned=now + hours(20),
        ),
    )
    stay2 = f"stay/urn:oid:1.2.250.1.211.12.1.2|{visit2}"

    async def late_notice() -> list:
        return d.mails(COORDINATOR, stay2, show(E.DISCHARGE_LATE_NOTICE))

    got = await wait_for(late_notice, 30)
    d.record(
        "A16 only 20 h before the discharge",
        "late notice mailed to the CPTS coordinator",
        late["code"] == "AA" and got,
        f"ACK {late['code']}, {len(got or [])} mail(s)",
    )

    # 3. the discharge itself, with the lettre de liaison (FHIR-speaking hospital)
    letter_id = f"urn:uuid:{__import__('uuid').uuid4()}"
    resp = await d.post(d.tokens.hospital, discharge_completed(visit1, now_utc(), letter_id))

    async def letter_mail() -> list:
        return [
            m
            for m in d.mails(GP.mailbox, stay1, show(E.DISCHARGE_COMPLETED))
            if "IHE_XDM.ZIP" in {p.get_filename() for p in m.iter_attachments()}
        ]

    got = await wait_for(letter_mail, 30)
    d.record(
        "discharge with the lettre de liaison (FHIR)",
        "202; the GP is mailed the letter with its IHE_XDM.ZIP",
        resp.status_code == 202 and got,
        f"HTTP {resp.status_code}",
    )
    docs = await wait_for(lambda: documents(d, PATIENT.ins, DocType.DISCHARGE_LETTER), 30)
    d.record(
        "the shared record (DMP-like store, ITI-67)",
        "the discharge letter is filed",
        docs,
        f"{docs or 0} document(s)",
    )

    # 4. an urgent referral nobody answers
    urgent = f"ADR-{run}-URG"
    resp = await d.post(
        d.tokens.gp, referral(E.REFERRAL_REQUESTED, urgent, now_utc(), priority="urgent")
    )
    case_u = f"referral/https://carebus.fr/fhir/sid/referral|{urgent}"
    got = await wait_for(
        lambda: _ready(d.mails(SPECIALIST.mailbox, case_u, show(E.SLA_REMINDER))), 30
    )
    d.record(
        "urgent referral, no answer (2 h compressed to 2 s)",
        "reminder to the cardiologist",
        resp.status_code == 202 and got,
    )
    got = await wait_for(lambda: _ready(d.mails(COORDINATOR, case_u, show(E.SLA_ESCALATED))), 30)
    got2 = d.mails(GP.mailbox, case_u, show(E.SLA_ESCALATED))
    d.record(
        "still no answer 2 h (2 s) later", "escalated to the coordinator and the GP", got and got2
    )

    # 5. a routine referral accepted then completed with a consultation report
    routine = f"ADR-{run}-ROU"
    case_r = f"referral/https://carebus.fr/fhir/sid/referral|{routine}"
    codes = []
    for et, token in (
        (E.REFERRAL_REQUESTED, d.tokens.gp),
        (E.REFERRAL_ACCEPTED, d.tokens.specialist),
        (E.REFERRAL_COMPLETED, d.tokens.specialist),
    ):
        report = f"urn:uuid:{__import__('uuid').uuid4()}" if et is E.REFERRAL_COMPLETED else None
        codes.append(
            (
                await d.post(
                    token, referral(et, routine, now_utc(), priority="routine", report_id=report)
                )
            ).status_code
        )
    got = await wait_for(
        lambda: _ready(d.mails(GP.mailbox, case_r, show(E.REFERRAL_COMPLETED))), 30
    )
    acc = d.mails(GP.mailbox, case_r, show(E.REFERRAL_ACCEPTED))
    d.record(
        "routine referral: requested, accepted, completed",
        "GP mailed the acceptance and the report",
        codes == [202, 202, 202] and got and acc,
        f"HTTP {codes}",
    )
    docs = await wait_for(lambda: documents(d, PATIENT.ins, DocType.CONSULTATION_REPORT), 30)
    d.record("the consultation report", "filed in the shared record", docs)
    again = await d.post(
        d.tokens.specialist, referral(E.REFERRAL_ACCEPTED, routine, now_utc(), priority="routine")
    )
    d.record(
        "accepting a completed referral",
        "refused 409 with the reason",
        again.status_code == 409,
        again.json()["issue"][0]["diagnostics"][:60],
    )

    # 6. a tele-expertise answered
    xid = f"TLX-{run}"
    case_x = f"expertise/https://carebus.fr/fhir/sid/expertise|{xid}"
    r1 = await d.post(d.tokens.gp, expertise(E.EXPERTISE_REQUESTED, xid, now_utc()))
    asked = await wait_for(lambda: _ready(d.mails(EXPERT.mailbox, case_x)), 30)
    r2 = await d.post(d.tokens.specialist, expertise(E.EXPERTISE_ANSWERED, xid, now_utc()))
    got = await wait_for(
        lambda: _ready(d.mails(GP.mailbox, case_x, show(E.EXPERTISE_ANSWERED))), 30
    )
    d.record(
        "tele-expertise asked to the dermatologist, answered",
        "both sides mailed",
        r1.status_code == r2.status_code == 202 and asked and got,
    )

    # 7. an invalid HL7 message
    bad_control = f"{run}-BAD"
    ack = await mllp_send(mllp, invalid_hl7(bad_control, now_utc()))
    kept = await wait_for(lambda: rejected(d, bad_control), 20)
    d.record(
        "A16 without a planned date",
        "AR naming PV2-9, kept on care.rejected-input",
        ack["code"] == "AR" and "PV2" in ack["err"] and kept,
        ack["err"][:40],
    )

    # 8. the follow-up one week after discharge (compressed to seconds)
    got = await wait_for(
        lambda: _ready(d.mails(COORDINATOR, stay1, show(E.DISCHARGE_FOLLOWUP_DUE))), 40
    )
    d.record(
        "one week after the discharge (8 s here)", "follow-up check asked of the coordinator", got
    )

    # 9. the platform's side
    notes = await wait_for(lambda: _ready(hook.event_notifications(), 3), 30)
    d.record(
        "the e-parcours platform's webhook",
        "signed notifications for the stays",
        notes,
        f"{len(hook.event_notifications())} notification(s)",
    )


SAMPLES_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "deploy" / "samples"


async def _ready(items: list, n: int = 1) -> list:
    return items if len(items) >= n else []


async def mllp_send(port: int, payload: bytes) -> dict[str, str]:
    from bus.demo import mllp_send as send

    return await send(port, payload)


async def subscribe(d: Demo, hook_port: int) -> dict:
    from adapters.eparcours.resource import EXT_FILTER
    from adapters.eparcours.topics import BY_ID

    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Parcours de sortie — territoire 03",
        "criteria": BY_ID["stay"].url,
        "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": "territory=03"}]},
        "channel": {
            "type": "rest-hook",
            "endpoint": f"http://127.0.0.1:{hook_port}/hook",
            "payload": "application/fhir+json",
        },
    }
    resp = await d.http.post(
        "/fhir/Subscription",
        content=orjson.dumps(body),
        headers={
            "content-type": "application/fhir+json",
            "authorization": f"Bearer {d.tokens.platform}",
        },
    )
    return resp.json() if resp.status_code in (200, 201) else {"status": f"HTTP {resp.status_code}"}


async def documents(d: Demo, ins: str, kind: DocType) -> int:
    import httpx

    async with httpx.AsyncClient(base_url=d.running.dmp_url, timeout=10) as client:
        resp = await client.get(
            "/DocumentReference",
            params={
                "patient.identifier": f"urn:oid:1.2.250.1.213.1.4.8|{ins}",
                "type": f"http://loinc.org|{kind.value}",
            },
        )
    if resp.status_code != 200:
        return 0
    return len(resp.json().get("entry", []))


async def rejected(d: Demo, control: str) -> bool:
    from bus.deadletter import header_text

    consumer = AIOKafkaConsumer(
        REJECTED_INPUT.name,
        bootstrap_servers=d.running.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **d.settings.kafka.client_options(),
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=1500)
        return any(
            header_text(r.headers, "rejected_reply_id") == control
            for rs in batch.values()
            for r in rs
        )
    finally:
        await consumer.stop()
