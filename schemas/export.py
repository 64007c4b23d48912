"""Machine-readable contract: JSON Schema of the envelope, AsyncAPI 3 of the topics.

Generated from the same constants the code uses (envelope header names, topic catalog,
event types), so the published contract cannot drift from the running one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas import envelope as env
from schemas.codes import EVENT_CODESYSTEM, EVENT_DISPLAY, EventType
from schemas.topics import CATALOG

FHIR_BUNDLE_SCHEMA = "https://hl7.org/fhir/R4/fhir.schema.json#/definitions/Bundle"
_UUIDISH = r"^[A-Za-z0-9._:/|@-]{1,200}$"


class EnvelopeHeaders(BaseModel):
    """Kafka headers of every CareBus event (CloudEvents 1.0, Kafka binary binding)."""

    model_config = ConfigDict(populate_by_name=True, title="CareBusEnvelopeHeaders")

    ce_specversion: str = Field(pattern=r"^1\.0$", description="CloudEvents version, always 1.0")
    ce_id: str = Field(
        pattern=_UUIDISH,
        description="Event id (also Bundle.id / MessageHeader.id); consumers dedup on it",
    )
    ce_source: str = Field(min_length=1, description="Producer URI (hospital, software, the bus)")
    ce_type: EventType = Field(description=f"Event type, a code of {EVENT_CODESYSTEM}")
    ce_time: str = Field(description="RFC 3339 time the event happened")
    ce_subject: str = Field(
        description="Case id, equal to the Kafka key: '<family>/<system>|<value>'"
    )
    ce_correlationid: str = Field(description="Case the event belongs to (defaults to ce_subject)")
    ce_causationid: str = Field(description="Id of the event that caused this one")
    traceparent: str = Field(
        pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$", description="W3C trace context"
    )
    content_type: str = Field(
        alias="content-type", description="Media type of the value", examples=[env.FHIR_JSON]
    )


def envelope_json_schema() -> dict[str, Any]:
    schema = EnvelopeHeaders.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://carebus.fr/schemas/envelope-headers.json"
    schema["description"] = (
        "Kafka record headers of a CareBus event. The record key is the case id (ce_subject); "
        "the value is a FHIR R4 Bundle of type 'message' whose first entry is a MessageHeader "
        "with eventCoding = ce_type."
    )
    return schema


def asyncapi() -> dict[str, Any]:
    """AsyncAPI 3.0 description of every topic and the events it carries."""
    messages: dict[str, Any] = {}
    for et in EventType:
        messages[et.value.replace(".", "_").replace("-", "_")] = {
            "name": et.value,
            "title": EVENT_DISPLAY[et],
            "contentType": env.FHIR_JSON,
            "headers": {"$ref": "#/components/schemas/EnvelopeHeaders"},
            "payload": {
                "schemaFormat": "application/schema+json;version=draft-07",
                "schema": {"$ref": FHIR_BUNDLE_SCHEMA},
            },
            "bindings": {"kafka": {"key": {"type": "string", "description": "case id"}}},
        }
    raw_message = {
        "name": "raw",
        "contentType": "application/octet-stream",
        "payload": {"type": "string", "format": "binary"},
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in CATALOG:
        cid = spec.name.replace(".", "_").replace("-", "_")
        msgs = {
            m: {"$ref": f"#/components/messages/{m}"}
            for m in (e.value.replace(".", "_").replace("-", "_") for e in spec.event_types)
        } or {"raw": {"$ref": "#/components/messages/raw"}}
        channels[cid] = {
            "address": spec.name,
            "description": spec.description,
            "messages": msgs,
            "bindings": {
                "kafka": {
                    "topic": spec.name,
                    "partitions": spec.partitions,
                    "topicConfiguration": {
                        "cleanup.policy": [spec.cleanup_policy],
                        "retention.ms": spec.retention_ms,
                    },
                    "bindingVersion": "0.5.0",
                }
            },
        }
        operations[f"receive_{cid}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{cid}"},
            "summary": f"Consume {spec.name} (key: {spec.key})",
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "CareBus",
            "version": "0.1.0",
            "description": "Care-coordination events between hospitals, GPs, specialists "
            "and regional platforms (France). Values are FHIR R4 message Bundles.",
        },
        "defaultContentType": env.FHIR_JSON,
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {"EnvelopeHeaders": envelope_json_schema()},
            "messages": {**messages, "raw": raw_message},
        },
    }
