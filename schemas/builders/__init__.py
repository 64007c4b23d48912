"""One builder per EventType: typed inputs (`schemas.model`) in, FHIR message Bundle dict out.

The registry `schemas.events.EVENT_SPECS` maps each event type to its builder and rule.
"""

from schemas.builders.consent import build_consent_updated
from schemas.builders.expertise import (
    build_expertise_answered,
    build_expertise_declined,
    build_expertise_requested,
)
from schemas.builders.notices import (
    build_delivery_failed,
    build_delivery_read,
    build_delivery_sent,
    build_discharge_followup_due,
    build_discharge_late_notice,
    build_notice,
    build_sla_breached,
    build_sla_escalated,
    build_sla_reminder,
)
from schemas.builders.referral import (
    build_referral_accepted,
    build_referral_cancelled,
    build_referral_completed,
    build_referral_rejected,
    build_referral_requested,
)
from schemas.builders.stay import (
    build_admission_cancelled,
    build_admission_notified,
    build_discharge_cancelled,
    build_discharge_completed,
    build_discharge_planned,
    build_discharge_reverted,
)

__all__ = [
    "build_admission_cancelled",
    "build_admission_notified",
    "build_consent_updated",
    "build_delivery_failed",
    "build_delivery_read",
    "build_delivery_sent",
    "build_discharge_cancelled",
    "build_discharge_completed",
    "build_discharge_followup_due",
    "build_discharge_late_notice",
    "build_discharge_planned",
    "build_discharge_reverted",
    "build_expertise_answered",
    "build_expertise_declined",
    "build_expertise_requested",
    "build_notice",
    "build_referral_accepted",
    "build_referral_cancelled",
    "build_referral_completed",
    "build_referral_rejected",
    "build_referral_requested",
    "build_sla_breached",
    "build_sla_escalated",
    "build_sla_reminder",
]
