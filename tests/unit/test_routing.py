"""Routing rules, pure: fakes stand in for the directory and subscriptions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import orjson
import pytest

from adapters.bundle_view import BundleView
from processors.routing.parties import CaseParties, parties_of
from processors.routing.rules import (
    OPPOSITION_BASIS,
    REASON_NO_INS,
    REASON_OPPOSITION,
    route,
)
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.samples import sample_bundle
from schemas.validate import validate_message
from schemas.workitem import Channel, RecipientKind


@dataclass
class Pro:
    mailbox: str | None


@dataclass
class Terr:
    id: str = "cpts-ba"
    name: str = "CPTS des Bords d'Allier"
    coordinator_name: str = "Coordination CPTS"
    coordinator_mailbox: str = "coordination@cpts-ba.mssante.fr"


class Lookup:
    def __init__(self, mailboxes: dict[str, str] | None = None, territory: bool = True) -> None:
        self.mailboxes = mailboxes or {}
        self.territory = territory

    def practitioner(self, rpps: str) -> Pro | None:
        return Pro(self.mailboxes[rpps]) if rpps in self.mailboxes else None

    def territory_for(self, finess: str | None, postcode: str | None) -> Terr | None:
        return Terr() if self.territory else None


class Subs:
    def matching(
        self, event_type: EventType, parties: CaseParties, patient_ids: Sequence[str]
    ) -> Sequence[tuple[str, str]]:
        return [("sub-1", "https://paaco.example/hook")] if event_type.family == "stay" else []


def event(et: str) -> tuple[Envelope, CaseParties, list[str]]:
    bundle = sample_bundle(et)
    msg = validate_message(orjson.dumps(bundle), allow_bus_events=True)
    env = Envelope(id=msg.event_id, type=et, source="s", subject=msg.case_id, data=msg.raw)
    view = BundleView(bundle)
    docs = [d.doc_type for d in view.documents()]
    return env, parties_of(view), docs


def recipients(decision) -> set[tuple[str, str, str]]:
    return {(i.channel.value, i.recipient.role, i.recipient.address) for i in decision.items}


@pytest.mark.parametrize(
    ("et", "role"),
    [
        ("referral.requested", "performer"),
        ("referral.cancelled", "performer"),
        ("referral.accepted", "requester"),
        ("referral.rejected", "requester"),
        ("expertise.requested", "performer"),
        ("expertise.declined", "requester"),
    ],
)
def test_referral_and_expertise_go_to_the_right_party(et: str, role: str) -> None:
    env, parties, docs = event(et)
    d = route(env, parties, Lookup(), documents=docs)
    assert [(i.channel, i.recipient.role) for i in d.items] == [(Channel.MSSANTE, role)]
    assert not d.unresolved


def test_directory_mailbox_wins_over_the_message() -> None:
    env, parties, _ = event("referral.requested")
    performer = parties.with_role("performer")[0]
    d = route(env, parties, Lookup({performer.rpps: "official@cardio.mssante.fr"}))
    assert d.items[0].recipient.address == "official@cardio.mssante.fr"


def test_discharge_completed_reaches_gp_team_coordinator_record_and_platforms() -> None:
    env, parties, docs = event("discharge.completed")
    d = route(env, parties, Lookup(), documents=docs, subscriptions=Subs())
    roles = sorted((i.channel.value, i.recipient.role) for i in d.items)
    assert roles == [
        ("dmp", "shared-record"),
        ("eparcours", "platform"),
        ("mssante", "care-team"),
        ("mssante", "care-team"),
        ("mssante", "coordinator"),
        ("mssante", "gp"),
    ]
    ids = [i.id for i in d.items]
    assert len(set(ids)) == len(ids)  # one work item per recipient and channel
    again = route(env, parties, Lookup(), documents=docs, subscriptions=Subs())
    assert [i.id for i in again.items] == ids  # routing twice gives the same ids


def test_opposition_blocks_record_and_platforms_and_is_audited() -> None:
    env, parties, docs = event("discharge.completed")
    opposed = replace(parties, opposition=True)
    d = route(env, opposed, Lookup(), documents=docs, subscriptions=Subs())
    assert {i.channel for i in d.items} == {Channel.MSSANTE}
    assert [(a.channel, a.reason, a.basis) for a in d.audit] == [
        (Channel.DMP, REASON_OPPOSITION, "event"),
        (Channel.EPARCOURS, REASON_OPPOSITION, "event"),
    ]
    assert all(a.event_id == env.id for a in d.audit)


def test_opposition_from_a_consent_event_is_cited_in_the_audit() -> None:
    env, parties, docs = event("discharge.completed")
    opposed = replace(parties, opposition=True, extra={OPPOSITION_BASIS: "consent.updated c-42"})
    d = route(env, opposed, Lookup(), documents=docs, subscriptions=Subs())
    assert {a.basis for a in d.audit} == {"consent.updated c-42"}
    assert "c-42" in str(d.audit[0]) and "withheld" in str(d.audit[0])


def test_no_qualified_ins_no_record() -> None:
    env, parties, docs = event("referral.completed")
    d = route(env, replace(parties, patient_ins=False), Lookup(), documents=docs)
    assert Channel.DMP not in {i.channel for i in d.items}
    assert [(a.channel, a.reason) for a in d.audit] == [(Channel.DMP, REASON_NO_INS)]


def test_referral_outcome_report_goes_to_the_record() -> None:
    env, parties, docs = event("referral.completed")
    d = route(env, parties, Lookup(), documents=docs)
    assert (Channel.DMP, RecipientKind.RECORD) in {(i.channel, i.recipient.kind) for i in d.items}


def test_unresolvable_recipients_are_reported_not_dropped() -> None:
    env, parties, docs = event("discharge.planned")
    no_mail = replace(parties, parties=tuple(replace(p, mailbox="") for p in parties.parties))
    d = route(env, no_mail, Lookup(territory=False), documents=docs)
    assert not d.items
    reasons = {(u.role, u.reason.split(" ")[0]) for u in d.unresolved}
    assert ("coordinator", "no") in reasons and ("gp", "no") in reasons
    assert all("Hélène" not in u.who and "LEF" not in u.who for u in d.unresolved)


def test_notices_follow_the_roles_the_policy_gives() -> None:
    env, parties, _ = event("referral.requested")
    notice = replace(env, id="n1", type="sla.escalated")
    d = route(notice, parties, Lookup(), notify=("coordinator", "requester"))
    assert {i.recipient.role for i in d.items} == {"coordinator", "requester"}


def test_delivery_failed_alerts_the_coordinator_only() -> None:
    env, parties, _ = event("discharge.planned")
    failed = replace(env, id="f1", type="delivery.failed")
    d = route(failed, parties, Lookup())
    assert [(i.recipient.role) for i in d.items] == ["coordinator"]


def test_delivery_sent_is_not_routed() -> None:
    env, parties, _ = event("referral.requested")
    assert not route(replace(env, id="s1", type="delivery.sent"), parties, Lookup()).items


def test_parties_round_trip_and_merge() -> None:
    _, parties, _ = event("referral.requested")
    assert CaseParties.from_bytes(parties.to_bytes()) == parties
    _, accepted, _ = event("referral.accepted")
    merged = parties.merged(accepted)
    assert {p.role for p in merged.parties} == {"requester", "performer"}
    assert len(merged.parties) == len({(p.role, p.rpps) for p in merged.parties})
