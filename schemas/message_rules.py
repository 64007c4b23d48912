"""Message-level rules: entries, references, MessageHeader, and what each flow's focus says.

`schemas.rules` checks each resource on its own (French identifiers, code bindings,
attachments); this module checks the message as a whole, then the focus against its
event: a `referral.accepted` whose Task is still `requested` is well-formed FHIR but a
lie, and the SLA and routing processors would act on it. One function per case family,
driven by the event's `EventSpec` (expected focus status), registered per event type in
`schemas.events.EVENT_SPECS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from schemas.builders.common import EXT_CHANNEL
from schemas.cases import FOCUS_FAMILY
from schemas.codes import EXT_DEADLINE, EXT_PLANNED_DISCHARGE, EventType
from schemas.json_scan import Scan
from schemas.outcome import IssueCode
from schemas.rules import (
    ENCOUNTER_STATUS,
    EVENT_STATUS,
    REQUEST_STATUS,
    RESOURCE_RULES,
    TASK_STATUS,
    RuleContext,
    as_dict,
    as_list,
    first,
    is_one_of,
    is_text,
)

if TYPE_CHECKING:
    from schemas.events import EventSpec

SENDER_TYPES = frozenset({"Practitioner", "PractitionerRole", "Organization"})
#: deeper JSON than this is refused (FHIR resources nest ~15 levels; Python recursion is finite)
MAX_DEPTH = 40
_PERFORMER_SENDS = frozenset(
    {EventType.REFERRAL_ACCEPTED, EventType.REFERRAL_REJECTED, EventType.REFERRAL_COMPLETED}
)
_DELIVERY = frozenset({EventType.DELIVERY_SENT, EventType.DELIVERY_FAILED, EventType.DELIVERY_READ})


def build_context(event: EventType, spec: EventSpec, bundle: dict) -> RuleContext:
    """Index the entries (fullUrl and Type/id) and check each entry's own shape."""
    ctx = RuleContext(event, spec, bundle, [], {})
    for i, entry in enumerate(as_list(bundle.get("entry"))):
        if not isinstance(entry, dict):
            ctx.fail(IssueCode.STRUCTURE, f"Bundle.entry[{i}]", "each entry must be a JSON object")
            ctx.resources.append(None)
            continue
        res = entry.get("resource")
        if not isinstance(res, dict):
            ctx.fail(
                IssueCode.REQUIRED,
                f"Bundle.entry[{i}].resource",
                "each entry of a message carries a resource",
            )
            res = None
        elif not is_text(res.get("resourceType")):
            ctx.fail(
                IssueCode.REQUIRED,
                f"Bundle.entry[{i}].resource.resourceType",
                "resourceType is required",
            )
            res = None
        url = entry.get("fullUrl")
        if not is_text(url):
            ctx.fail(
                IssueCode.REQUIRED,
                f"Bundle.entry[{i}].fullUrl",
                "every entry needs a fullUrl (urn:uuid:…) that references use",
            )
        elif url in ctx.by_ref:
            ctx.fail(
                IssueCode.INVARIANT,
                f"Bundle.entry[{i}].fullUrl",
                f"fullUrl {url!r} is used by two entries (bdl-7)",
            )
        else:
            ctx.by_ref[url] = i
        ctx.resources.append(res)
        if res is not None and is_text(res.get("id")):
            ctx.by_ref.setdefault(f"{res['resourceType']}/{res['id']}", i)
    return ctx


def _dangling(root: dict, known: dict[str, int]) -> bool:
    """Fast pass: does this JSON tree hold an unresolvable reference (or nest too deep)?
    Iterative and path-free: it runs over every resource of every message."""
    stack: list[tuple[Any, int]] = [(root, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_DEPTH:
            return True
        if type(node) is dict:
            reference = node.get("reference")
            if type(reference) is str and reference not in known and reference[:1] != "#":
                return True
            children: Iterable[Any] = node.values()
        else:
            children = node
        depth += 1
        for child in children:
            if type(child) is dict or type(child) is list:
                push((child, depth))
    return False


def _suspect(seen: Scan, known: dict[str, int]) -> bool:
    if seen.depth > MAX_DEPTH + 3:
        return True
    return any(r not in known and r[:1] != "#" for r in seen.references)


def _walk_refs(ctx: RuleContext, node: object, path: str, depth: int) -> None:
    """Slow pass, only over a resource the fast pass flagged: report where."""
    if depth > MAX_DEPTH:
        ctx.fail(IssueCode.STRUCTURE, path, f"nested deeper than {MAX_DEPTH} levels")
        return
    if isinstance(node, dict):
        reference = node.get("reference")
        if (
            isinstance(reference, str)
            and not reference.startswith("#")
            and reference not in ctx.by_ref
        ):
            ctx.fail(
                IssueCode.INVARIANT,
                f"{path}.reference",
                f"reference {reference!r} does not resolve to any entry of the bundle: a message "
                "must carry every resource it references",
            )
        for key, value in node.items():
            if isinstance(value, dict | list):
                _walk_refs(ctx, value, f"{path}.{key}", depth + 1)
    elif isinstance(node, list):
        for j, value in enumerate(node):
            if isinstance(value, dict | list):
                _walk_refs(ctx, value, f"{path}[{j}]", depth + 1)


def check_header(ctx: RuleContext) -> None:
    """MessageHeader: source, focus (resolvable, of the event's type), sender."""
    head = ctx.resources[0] or {}
    at = ctx.at(0)
    if not is_text(as_dict(head.get("source")).get("endpoint")):
        ctx.fail(
            IssueCode.REQUIRED,
            f"{at}.source.endpoint",
            "MessageHeader.source.endpoint names the producer (ce_source)",
        )
    focus = as_list(head.get("focus"))
    if not focus:
        ctx.fail(
            IssueCode.REQUIRED,
            f"{at}.focus",
            f"{ctx.event} needs MessageHeader.focus → its {ctx.spec.focus_type}",
        )
    else:
        ctx.focus = ctx.resolve(as_dict(focus[0]).get("reference"))
        if not is_text(as_dict(focus[0]).get("reference")):
            ctx.fail(
                IssueCode.REQUIRED,
                f"{at}.focus[0].reference",
                "focus must reference an entry by its fullUrl",
            )
        found = ctx.type_of(ctx.focus)
        if ctx.focus is not None and found != ctx.spec.focus_type:
            ctx.fail(
                IssueCode.VALUE,
                f"{at}.focus[0].reference",
                f"the focus of {ctx.event} must be a {ctx.spec.focus_type}, got {found}",
            )
            ctx.focus = None
    sender = head.get("sender")
    if sender is None:
        if ctx.event.inbound:
            ctx.fail(
                IssueCode.REQUIRED,
                f"{at}.sender",
                f"{ctx.event} must name its sender "
                "(Practitioner, PractitionerRole or Organization)",
            )
        return
    ctx.sender = ctx.resolve(as_dict(sender).get("reference"))
    found = ctx.type_of(ctx.sender)
    if ctx.sender is not None and found not in SENDER_TYPES:
        ctx.fail(
            IssueCode.VALUE,
            f"{at}.sender.reference",
            f"sender must be a Practitioner, PractitionerRole or Organization, got {found}",
        )
        ctx.sender = None


def check_bundle(ctx: RuleContext, seen: Scan | None = None) -> None:
    """Rules common to every event: bundle metadata, references, required resources,
    French identifiers and code bindings of each resource.

    `seen` is the whole-message scan validate_message already made: when every reference
    it found resolves and nothing nests deeper than a resource may (entry resources sit
    3 levels below the root), the per-resource walk has nothing to report and is skipped.
    """
    if not is_text(ctx.bundle.get("id")):
        ctx.fail(IssueCode.REQUIRED, "Bundle.id", "Bundle.id is the event id (ce_id, dedup key)")
    if not is_text(ctx.bundle.get("timestamp")):
        ctx.fail(
            IssueCode.REQUIRED, "Bundle.timestamp", "a message Bundle needs its timestamp (ce_time)"
        )
    if seen is None or _suspect(seen, ctx.by_ref):
        for i, res in enumerate(ctx.resources):
            if res is not None and _dangling(res, ctx.by_ref):
                _walk_refs(ctx, res, ctx.at(i), 0)
    check_header(ctx)
    present = {r.get("resourceType") for r in ctx.resources if r}
    for wanted in sorted(ctx.spec.required_resource_types - present):
        ctx.fail(
            IssueCode.REQUIRED,
            "Bundle.entry",
            f"{ctx.event} requires a {wanted} resource in the bundle",
        )
    for i, res in enumerate(ctx.resources):
        check = RESOURCE_RULES.get(str(res.get("resourceType"))) if res else None
        if check is not None and res is not None:
            check(ctx, i, res)


def _focus(ctx: RuleContext) -> tuple[dict, str] | None:
    if ctx.focus is None:
        return None
    return ctx.resources[ctx.focus] or {}, ctx.at(ctx.focus)


def _need(ctx: RuleContext, res: dict, at: str, name: str, why: str) -> bool:
    value = res.get(name)
    if value in (None, "", [], {}):
        ctx.fail(
            IssueCode.REQUIRED,
            f"{at}.{name}",
            f"{ctx.event}: {res.get('resourceType')}.{name} is required ({why})",
        )
        return False
    return True


def _case_identifier(ctx: RuleContext, ident: object, at: str) -> None:
    ident = as_dict(ident)
    if not (is_text(ident.get("system")) and is_text(ident.get("value"))):
        ctx.fail(
            IssueCode.REQUIRED,
            at,
            "the case identifier needs a system and a value (it is the case id / Kafka key)",
        )


def _status(ctx: RuleContext, res: dict, at: str, allowed: frozenset[str], origin: str) -> None:
    wanted, got = ctx.spec.focus_status, res.get("status")
    if wanted is not None and is_one_of(got, allowed) and got != wanted:
        ctx.fail(
            IssueCode.BUSINESS_RULE,
            f"{at}.status",
            f"{res.get('resourceType')}.status must be {wanted!r} for {ctx.event} "
            f"({origin}), got {got!r}",
        )
    elif got is None:
        ctx.fail(
            IssueCode.REQUIRED, f"{at}.status", f"{res.get('resourceType')}.status is required"
        )


def _extension(res: dict, url: str) -> tuple[int, dict] | None:
    for j, ext in enumerate(as_list(res.get("extension"))):
        if as_dict(ext).get("url") == url:
            return j, ext
    return None


def referral_rule(ctx: RuleContext) -> None:
    """The Task: case identifier, status = task_states.EVENT_TARGET_STATUS, parties."""
    found = _focus(ctx)
    if found is None:
        return
    task, at = found
    if _need(ctx, task, at, "identifier", "the referral id"):
        _case_identifier(ctx, first(task["identifier"]), f"{at}.identifier[0]")
    _status(ctx, task, at, TASK_STATUS, "task_states.EVENT_TARGET_STATUS")
    _need(ctx, task, at, "for", "the patient")
    _need(ctx, task, at, "requester", "the referring professional")
    if ctx.event in _PERFORMER_SENDS:
        _need(ctx, task, at, "owner", "the professional who took the referral")
    if ctx.event is EventType.REFERRAL_REJECTED:
        _need(
            ctx, task, at, "statusReason", "the requester must learn why, to redirect the patient"
        )
    if ctx.event is EventType.REFERRAL_COMPLETED and _need(
        ctx, task, at, "output", "the consultation report"
    ):
        if not any(as_dict(o).get("valueReference") for o in as_list(task["output"])):
            ctx.fail(
                IssueCode.REQUIRED,
                f"{at}.output[0].valueReference",
                "referral.completed returns the report as a DocumentReference",
            )


def stay_rule(ctx: RuleContext) -> None:
    """The Encounter: stay number, status per ADT event, planned/actual discharge."""
    found = _focus(ctx)
    if found is None:
        return
    enc, at = found
    if _need(ctx, enc, at, "identifier", "the stay number"):
        _case_identifier(ctx, first(enc["identifier"]), f"{at}.identifier[0]")
    _status(ctx, enc, at, ENCOUNTER_STATUS, "IHE PAM movement")
    _need(ctx, enc, at, "subject", "the patient")
    planned_ext = _extension(enc, EXT_PLANNED_DISCHARGE)
    _stay_dates(ctx, enc, at, planned_ext)
    if ctx.event is EventType.DISCHARGE_PLANNED:
        ext = planned_ext
        if ext is None:
            ctx.fail(
                IssueCode.REQUIRED,
                f"{at}.extension",
                f"discharge.planned needs the planned date (extension {EXT_PLANNED_DISCHARGE})",
            )
        elif not is_text(ext[1].get("valueDateTime")):
            ctx.fail(
                IssueCode.REQUIRED,
                f"{at}.extension[{ext[0]}].valueDateTime",
                "the planned discharge is a valueDateTime",
            )
    if ctx.event is EventType.DISCHARGE_COMPLETED and not is_text(
        as_dict(enc.get("period")).get("end")
    ):
        ctx.fail(
            IssueCode.REQUIRED,
            f"{at}.period.end",
            "discharge.completed needs the discharge time (Encounter.period.end)",
        )


def _when(value: object) -> datetime | date | None:
    """A FHIR dateTime/instant as a comparable value: aware datetime, or a date when only
    the day is known; None for partial (year, year-month), naive or unreadable values
    (the structural validation judges the format)."""
    if not isinstance(value, str):
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _before(a: datetime | date, b: datetime | date) -> bool:
    """a < b, at day precision when either is a date."""
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a < b
    day_a = a.date() if isinstance(a, datetime) else a
    day_b = b.date() if isinstance(b, datetime) else b
    return day_a < day_b


def _stay_dates(ctx: RuleContext, enc: dict, at: str, planned: tuple[int, dict] | None) -> None:
    """Dates that contradict each other: FHIR per-1 (period.start ≤ period.end), a
    discharge planned before the admission (e.g. a planned date years in the past)."""
    period = as_dict(enc.get("period"))
    start, end = _when(period.get("start")), _when(period.get("end"))
    if start is not None and end is not None and _before(end, start):
        ctx.fail(IssueCode.INVARIANT, f"{at}.period.end", "the stay ends before it starts (per-1)")
    when = _when(planned[1].get("valueDateTime")) if planned else None
    if planned and start is not None and when is not None and _before(when, start):
        ctx.fail(
            IssueCode.VALUE,
            f"{at}.extension[{planned[0]}].valueDateTime",
            "the planned discharge is before the admission (Encounter.period.start)",
        )


def expertise_rule(ctx: RuleContext) -> None:
    """CommunicationRequest (request) or Communication (answer/decline) with its case."""
    found = _focus(ctx)
    if found is None:
        return
    res, at = found
    if ctx.event is EventType.EXPERTISE_REQUESTED:
        if _need(ctx, res, at, "identifier", "the expertise id"):
            _case_identifier(ctx, first(res["identifier"]), f"{at}.identifier[0]")
        _status(ctx, res, at, REQUEST_STATUS, "an open request")
        _need(ctx, res, at, "payload", "the question")
        _need(ctx, res, at, "recipient", "the expert")
        _need(ctx, res, at, "subject", "the patient")
        return
    if _need(ctx, res, at, "basedOn", "the CommunicationRequest it answers, by identifier"):
        first_based = as_dict(first(res["basedOn"]))
        _case_identifier(ctx, first_based.get("identifier"), f"{at}.basedOn[0].identifier")
    _status(ctx, res, at, EVENT_STATUS, "answered = completed, declined = not-done")
    if ctx.event is EventType.EXPERTISE_DECLINED:
        _need(ctx, res, at, "statusReason", "why the expert declined")
    else:
        _need(ctx, res, at, "payload", "the expert's answer")


def notice_rule(ctx: RuleContext) -> None:
    """Bus notices: a completed Communication about a case, with its delivery details."""
    found = _focus(ctx)
    if found is None:
        return
    res, at = found
    _status(ctx, res, at, EVENT_STATUS, "a notice reports a fact")
    if _need(ctx, res, at, "about", "the case, by identifier"):
        about = as_dict(first(res["about"]))
        if not is_one_of(about.get("type"), FOCUS_FAMILY):
            ctx.fail(
                IssueCode.VALUE,
                f"{at}.about[0].type",
                f"about.type must be one of {', '.join(FOCUS_FAMILY)}",
            )
        _case_identifier(ctx, about.get("identifier"), f"{at}.about[0].identifier")
    _need(ctx, res, at, "payload", "the text shown to people")
    deadline = _extension(res, EXT_DEADLINE)
    if deadline is not None and not is_text(deadline[1].get("valueDateTime")):
        ctx.fail(
            IssueCode.VALUE,
            f"{at}.extension[{deadline[0]}].valueDateTime",
            "the deadline is a valueDateTime",
        )
    if ctx.event in _DELIVERY:
        channel = _extension(res, EXT_CHANNEL)
        if channel is None or not is_text(channel[1].get("valueCode")):
            ctx.fail(
                IssueCode.REQUIRED,
                f"{at}.extension",
                f"{ctx.event} needs the delivery channel (extension {EXT_CHANNEL})",
            )
