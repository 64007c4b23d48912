"""Ingress validation of a FHIR message Bundle: bytes in, `ValidatedMessage` or refusal out.

Every inbound adapter (FHIR HTTP, Kafka SDK, HL7 v2 mapper output) calls
`validate_message` once; downstream only reads the summary fields. The order is the
cost order: size, JSON parse, envelope (Bundle/MessageHeader/event code), CareBus rules
on the plain dict (~tens of µs), then the FHIR R4 structure: `schemas.fastfhir` (same
verdict as the fhir.resources R4B models, ~tens of µs), fhir.resources (~ms) only to
explain a rejection. A refusal lists every problem found, each with a FHIRPath-like
expression, so a sender fixes its message in one round trip.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache

import orjson

from schemas.cases import CaseIdError, case_id
from schemas.codes import EVENT_CODESYSTEM, EXT_PLANNED_DISCHARGE, FINESS, RPPS, EventType
from schemas.events import EVENT_SPECS, EventSpec
from schemas.json_scan import DuplicateName, check_unique_names, scan
from schemas.message_rules import build_context, check_bundle
from schemas.outcome import Issue, IssueCode, ValidationFailed, fhirpath
from schemas.rules import RuleContext, as_dict, as_list, is_one_of, is_text
from schemas.task_states import TaskStatus

DEFAULT_MAX_BYTES = 2_000_000
_log = logging.getLogger(__name__)
# Structural validation path: "fast" (schemas.fastfhir, reference only on rejects) or
# "reference" (fhir.resources for every message).
_REFERENCE_ONLY = os.environ.get("CAREBUS_STRUCTURAL_PATH", "fast").lower() == "reference"
_DISAGREEMENTS = 0
_NATIONAL_SYSTEMS = frozenset({RPPS, FINESS})
_TASK_STATUSES = frozenset(s.value for s in TaskStatus)
_EVENT_CODES = frozenset(e.value for e in EventType)
_INBOUND = ", ".join(e.value for e in EventType if e.inbound)
_ALL = ", ".join(e.value for e in EventType)


@dataclass(frozen=True, slots=True)
class ValidatedMessage:
    """What the bus needs from a valid message, read once at ingress.

    `bundle` and `raw` are excluded from repr so that logging a message never logs
    patient data. Identifier tuples are (system, value).
    """

    event_type: EventType
    event_id: str
    case_id: str
    source: str
    timestamp: str
    sender_ids: tuple[tuple[str, str], ...]
    patient_ids: tuple[tuple[str, str], ...]
    task_status: TaskStatus | None
    priority: str | None
    planned_discharge: str | None
    bundle: dict = field(repr=False)
    raw: bytes = field(repr=False)


def validate_message(
    raw: bytes | bytearray | memoryview | str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    structural: bool = True,
    allow_bus_events: bool = False,
) -> ValidatedMessage:
    """Validate a message Bundle; raise ValidationFailed with every issue found.

    `structural=False` skips the fhir.resources model validation (for bytes that were
    already validated at ingress, e.g. replayed from a topic). `allow_bus_events` is for
    the bus's own producers: outside producers may not publish sla.*/delivery.*.
    """
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise ValidationFailed(
            [
                Issue(
                    IssueCode.TOO_LONG,
                    f"message is {len(data)} bytes; the limit is {max_bytes}",
                    "Bundle",
                )
            ]
        )
    try:
        bundle = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(
            [
                Issue(
                    IssueCode.STRUCTURE,
                    f"malformed JSON at line {exc.lineno}, column {exc.colno} "
                    f"(byte {exc.pos}): {exc.msg}",
                    "Bundle",
                )
            ]
        ) from None
    seen = scan(bundle)
    duplicate = _duplicate_name(data, seen.keys)
    if duplicate is not None:
        raise ValidationFailed([duplicate])
    event, spec, issues = _envelope(bundle, allow_bus_events)
    ctx = build_context(event, spec, bundle)
    ctx.issues[:0] = issues
    check_bundle(ctx, seen)
    spec.rule(ctx)
    if structural:
        ctx.issues.extend(structural_issues(bundle))
    case = ""
    try:
        case = case_id(event, bundle)
    except CaseIdError as exc:
        if not ctx.issues:
            ctx.fail(IssueCode.REQUIRED, exc.expression, str(exc))
    if ctx.issues:
        raise ValidationFailed(dict.fromkeys(ctx.issues))
    return _summary(ctx, case, data)


def _duplicate_name(data: bytes, parsed_keys: int) -> Issue | None:
    """A JSON object naming a property twice (see schemas.json_scan): refused, named."""
    try:
        check_unique_names(data, parsed_keys)
    except DuplicateName as exc:
        if exc.name is None:
            return Issue(IssueCode.STRUCTURE, "JSON nested too deeply to be checked", "Bundle")
        return Issue(
            IssueCode.STRUCTURE,
            f"JSON property {exc.name!r} appears twice in the same object; each name must be "
            "unique (readers would disagree on its value)",
            "Bundle",
        )
    return None


def validate_bundle(
    bundle: dict,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    structural: bool = True,
    allow_bus_events: bool = False,
) -> ValidatedMessage:
    """Validate a Bundle dict (serialises it first: the bytes are what travels)."""
    return validate_message(
        orjson.dumps(bundle),
        max_bytes=max_bytes,
        structural=structural,
        allow_bus_events=allow_bus_events,
    )


def _envelope(bundle: object, allow_bus_events: bool) -> tuple[EventType, EventSpec, list[Issue]]:
    """Bundle type message, MessageHeader first, known event code. Without these nothing
    else can be judged, so problems here are raised at once."""
    if not isinstance(bundle, dict):
        raise ValidationFailed(
            [Issue(IssueCode.STRUCTURE, "a message is a JSON object (a FHIR Bundle)", "Bundle")]
        )
    fatal: list[Issue] = []
    if bundle.get("resourceType") != "Bundle":
        fatal.append(
            Issue(
                IssueCode.STRUCTURE,
                f"resourceType must be 'Bundle', got {bundle.get('resourceType')!r}",
                "Bundle.resourceType",
            )
        )
    kind = bundle.get("type")
    if kind is None:
        fatal.append(
            Issue(
                IssueCode.REQUIRED, "Bundle.type is required and must be 'message'", "Bundle.type"
            )
        )
    elif kind != "message":
        fatal.append(
            Issue(
                IssueCode.STRUCTURE, f"Bundle.type must be 'message', got {kind!r}", "Bundle.type"
            )
        )
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        fatal.append(
            Issue(
                IssueCode.REQUIRED,
                "a message Bundle needs entries, the MessageHeader first",
                "Bundle.entry",
            )
        )
        raise ValidationFailed(fatal)
    header = as_dict(as_dict(entries[0]).get("resource"))
    if header.get("resourceType") != "MessageHeader":
        elsewhere = [
            i
            for i, e in enumerate(entries)
            if as_dict(as_dict(e).get("resource")).get("resourceType") == "MessageHeader"
        ]
        if elsewhere:
            fatal.append(
                Issue(
                    IssueCode.STRUCTURE,
                    f"the MessageHeader must be the first entry; found at entry[{elsewhere[0]}]",
                    "Bundle.entry[0].resource",
                )
            )
        else:
            fatal.append(
                Issue(
                    IssueCode.REQUIRED,
                    "a message Bundle must start with a MessageHeader",
                    "Bundle.entry[0].resource",
                )
            )
        raise ValidationFailed(fatal)
    at = "Bundle.entry[0].resource.eventCoding"
    coding = header.get("eventCoding")
    if not isinstance(coding, dict):
        fatal.append(
            Issue(
                IssueCode.REQUIRED,
                f"MessageHeader.eventCoding (system {EVENT_CODESYSTEM}) names the event type",
                at,
            )
        )
        raise ValidationFailed(fatal)
    if coding.get("system") != EVENT_CODESYSTEM:
        fatal.append(
            Issue(
                IssueCode.NOT_SUPPORTED,
                f"eventCoding.system must be {EVENT_CODESYSTEM}, got {coding.get('system')!r}",
                f"{at}.system",
            )
        )
    code = coding.get("code")
    allowed = _ALL if allow_bus_events else _INBOUND
    event = EventType(code) if is_one_of(code, _EVENT_CODES) else None
    if event is None:
        fatal.append(
            Issue(
                IssueCode.NOT_SUPPORTED,
                f"unknown event type {code!r}; allowed: {allowed}",
                f"{at}.code",
            )
        )
        raise ValidationFailed(fatal)
    if fatal:
        raise ValidationFailed(fatal)
    issues: list[Issue] = []
    if not event.inbound and not allow_bus_events:
        issues.append(
            Issue(
                IssueCode.FORBIDDEN,
                f"{event} is emitted by the bus only; producers may publish: {allowed}",
                f"{at}.code",
            )
        )
    return event, EVENT_SPECS[event], issues


@lru_cache(maxsize=512)
def _is_resource_type(name: str) -> bool:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return bool(get_fhir_model_class(name).has_resource_base())
    except Exception:  # noqa: BLE001 - any failure means "not a resource type we know"
        return False


def _code_of(error_type: str) -> IssueCode:
    if error_type.endswith("missing"):
        return IssueCode.REQUIRED
    if error_type == "value_error":
        return IssueCode.VALUE
    return IssueCode.STRUCTURE


def use_reference_structural(enabled: bool) -> None:
    """Operators' switch (also `CAREBUS_STRUCTURAL_PATH=reference`): judge every
    message with fhir.resources alone, bypassing `schemas.fastfhir`."""
    global _REFERENCE_ONLY
    _REFERENCE_ONLY = enabled


def fast_path_disagreements() -> int:
    """How many messages the fast path rejected but fhir.resources accepted."""
    return _DISAGREEMENTS


def structural_issues(bundle: dict, *, reference: bool | None = None) -> list[Issue]:
    """FHIR R4 structure, with fhir.resources' verdict, issues and messages.

    `schemas.fastfhir` answers first (~tens of µs, same verdict as fhir.resources);
    only a rejected message, or `reference=True`, pays for fhir.resources, which then
    produces the detailed issues. Should the two ever disagree, fhir.resources wins
    and the disagreement is counted and logged (issue expressions only, no data).
    """
    if reference is None:
        reference = _REFERENCE_ONLY
    verdict = None
    if not reference:
        from schemas.fastfhir import fast_verdict

        verdict = fast_verdict(bundle)
        if verdict is True:
            return []
    issues = _reference_issues(bundle)
    if verdict is False and not issues:
        global _DISAGREEMENTS
        _DISAGREEMENTS += 1
        _log.warning(
            "fastfhir rejected a message that fhir.resources accepts (%d so far); "
            "please report it with the event type",
            _DISAGREEMENTS,
        )
    return issues


def _reference_issues(bundle: dict) -> list[Issue]:
    """Full FHIR R4 validation with fhir.resources (R4B models, R4-compatible for the
    resources CareBus uses); pydantic error locations become FHIRPath expressions."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    issues = []
    for i, entry in enumerate(as_list(bundle.get("entry"))):
        kind = as_dict(as_dict(entry).get("resource")).get("resourceType")
        if isinstance(kind, str) and not _is_resource_type(kind):
            issues.append(
                Issue(
                    IssueCode.NOT_SUPPORTED,
                    f"{kind!r} is not a FHIR R4 resource type",
                    f"Bundle.entry[{i}].resource.resourceType",
                )
            )
    if issues:
        return issues
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        return [
            Issue(
                _code_of(err["type"]),
                f"FHIR R4 structure: {err['msg']}",
                fhirpath("Bundle", err["loc"]),
            )
            for err in exc.errors(include_input=False, include_url=False)
        ]
    except KeyError as exc:  # fhir.resources looks nested resource types up in a dict
        name = str(exc.args[0]).removeprefix("R4.").removesuffix("Type") if exc.args else "?"
        return [
            Issue(IssueCode.NOT_SUPPORTED, f"{name!r} is not a FHIR R4 resource type", "Bundle")
        ]
    except Exception as exc:  # noqa: BLE001 - odd input can make fhir.resources raise anything
        diagnostics = f"not a valid FHIR R4 Bundle ({type(exc).__name__}: {exc})"[:300]
        return [Issue(IssueCode.STRUCTURE, diagnostics, "Bundle")]
    return []


def _identifiers(res: dict | None, systems: frozenset[str] | None = None) -> list[tuple[str, str]]:
    out = []
    for ident in as_list((res or {}).get("identifier")):
        system, value = as_dict(ident).get("system"), as_dict(ident).get("value")
        if is_text(system) and is_text(value) and (systems is None or system in systems):
            out.append((system, value))
    return out


def _sender_ids(ctx: RuleContext) -> tuple[tuple[str, str], ...]:
    if ctx.sender is None:
        return ()
    res = ctx.resources[ctx.sender] or {}
    found = _identifiers(res, _NATIONAL_SYSTEMS)
    if res.get("resourceType") == "PractitionerRole":
        for part in ("practitioner", "organization"):
            linked = ctx.resolve(as_dict(res.get(part)).get("reference"))
            if linked is not None:
                found += _identifiers(ctx.resources[linked], _NATIONAL_SYSTEMS)
    return tuple(found)


def _summary(ctx: RuleContext, case: str, raw: bytes) -> ValidatedMessage:
    bundle = ctx.bundle
    focus = (ctx.resources[ctx.focus] or {}) if ctx.focus is not None else {}
    status = focus.get("status") if focus.get("resourceType") == "Task" else None
    planned = None
    for ext in as_list(focus.get("extension")):
        if as_dict(ext).get("url") == EXT_PLANNED_DISCHARGE:
            planned = as_dict(ext).get("valueDateTime")
    patients = [p for i in ctx.indexes("Patient") for p in _identifiers(ctx.resources[i])]
    return ValidatedMessage(
        event_type=ctx.event,
        event_id=bundle["id"],
        case_id=case,
        source=as_dict((ctx.resources[0] or {}).get("source"))["endpoint"],
        timestamp=bundle["timestamp"],
        sender_ids=_sender_ids(ctx),
        patient_ids=tuple(patients),
        task_status=TaskStatus(status) if is_one_of(status, _TASK_STATUSES) else None,
        priority=focus.get("priority"),
        planned_discharge=planned,
        bundle=bundle,
        raw=raw,
    )
