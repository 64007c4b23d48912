"""The rule of `consent.updated`: what routing needs to act on a patient's decision.

fhir.resources checks the shape of a Consent, not its meaning: it accepts any status or
provision type string. Routing turns `status`/`provision.type` into "withhold from the
shared record and the platforms", so both bindings are checked here, and the patient
must carry an INS: the decision is kept per patient, by INS.
"""

from __future__ import annotations

from schemas.codes import INS_SYSTEMS
from schemas.message_rules import _case_identifier, _focus, _need
from schemas.outcome import IssueCode
from schemas.rules import RuleContext, as_dict, as_list, first, is_one_of

#: Consent.status values the bus acts on (draft/proposed decide nothing yet; a rejected
#: or entered-in-error Consent is not a decision either)
CONSENT_STATUS = frozenset({"active", "inactive"})
PROVISION_TYPES = frozenset({"deny", "permit"})


def consent_rule(ctx: RuleContext) -> None:
    """The Consent: identifier, status, provision type, dateTime, and an INS patient."""
    found = _focus(ctx)
    if found is None:
        return
    consent, at = found
    if _need(ctx, consent, at, "identifier", "the consent id"):
        _case_identifier(ctx, first(consent["identifier"]), f"{at}.identifier[0]")
    status = consent.get("status")
    if status is None:
        ctx.fail(IssueCode.REQUIRED, f"{at}.status", "Consent.status is required")
    elif not is_one_of(status, CONSENT_STATUS):
        ctx.fail(
            IssueCode.VALUE,
            f"{at}.status",
            f"Consent.status must be active or inactive (withdrawn), got {status!r}",
        )
    _need(ctx, consent, at, "dateTime", "when the patient decided: the latest decision wins")
    provision = as_dict(consent.get("provision"))
    kind = provision.get("type")
    if kind is None:
        ctx.fail(
            IssueCode.REQUIRED,
            f"{at}.provision.type",
            "Consent.provision.type is required: deny (opposition) or permit (lifted)",
        )
    elif not is_one_of(kind, PROVISION_TYPES):
        ctx.fail(
            IssueCode.VALUE,
            f"{at}.provision.type",
            f"Consent.provision.type must be deny or permit, got {kind!r}",
        )
    if not _need(ctx, consent, at, "patient", "whose decision it is"):
        return
    index = ctx.resolve(as_dict(consent["patient"]).get("reference"))
    patient = (ctx.resources[index] or {}) if index is not None else {}
    if patient.get("resourceType") != "Patient":
        ctx.fail(
            IssueCode.STRUCTURE,
            f"{at}.patient.reference",
            "Consent.patient must reference the Patient entry of the message",
        )
        return
    if not any(
        is_one_of(as_dict(i).get("system"), INS_SYSTEMS) for i in as_list(patient.get("identifier"))
    ):
        ctx.fail(
            IssueCode.REQUIRED,
            f"{ctx.at(index)}.identifier",
            "the patient of a consent needs an INS (the decision is kept per INS)",
        )


def opposes(consent: dict) -> bool:
    """Does this (validated) Consent record an opposition to sharing?"""
    provision = as_dict(consent.get("provision"))
    return consent.get("status") == "active" and provision.get("type") == "deny"
