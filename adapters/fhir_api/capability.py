"""The CapabilityStatement served at GET /fhir/metadata (pure)."""

from __future__ import annotations

from schemas.codes import CAREBUS_BASE, EVENT_CODESYSTEM, EVENT_DISPLAY, EventType


def capability_statement(base_url: str, *, software_version: str = "0.1.0") -> dict:
    inbound = [e for e in EventType if e.inbound]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "CareBus",
        "kind": "instance",
        "software": {"name": "CareBus", "version": software_version},
        "implementation": {"description": "CareBus FHIR messaging ingress", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "OAuth",
                                }
                            ],
                            "text": "Bearer token per client (Authorization: Bearer …)",
                        }
                    ]
                },
                "operation": [
                    {
                        "name": "process-message",
                        "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message",
                    }
                ],
            }
        ],
        "messaging": [
            {
                "endpoint": [
                    {
                        "protocol": {
                            "system": "http://terminology.hl7.org/CodeSystem/message-transport",
                            "code": "http",
                        },
                        "address": f"{base_url}/$process-message",
                    }
                ],
                "reliableCache": 0,
                "documentation": f"Event codes are from {EVENT_CODESYSTEM}. A message is "
                "answered 202 only after it is durably written.",
                "supportedMessage": [
                    {
                        "mode": "receiver",
                        "definition": f"{CAREBUS_BASE}/MessageDefinition/{e.value}",
                    }
                    for e in inbound
                ],
            }
        ],
        "extension": [
            {
                "url": f"{CAREBUS_BASE}/StructureDefinition/event-codesystem",
                "valueUri": EVENT_CODESYSTEM,
            }
        ],
    }


def event_codesystem() -> dict:
    """The CareBus event CodeSystem, published so receivers can resolve eventCoding."""
    return {
        "resourceType": "CodeSystem",
        "id": "carebus-event",
        "url": EVENT_CODESYSTEM,
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "concept": [{"code": e.value, "display": EVENT_DISPLAY[e]} for e in EventType],
    }
