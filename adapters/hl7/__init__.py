"""The pure HL7 v2 side of the hospital inbound adapter (IHE PAM France ADT over MLLP).

Kept free of Kafka and of any listener: `framing` cuts MLLP frames out of a byte stream,
`message` parses one frame into segments/fields, `adt` maps an ADT message to a typed
`AdtEvent`, `ack` builds the HL7 acknowledgement. The listener wires them together.
Every validation problem is an `schemas.outcome.Issue` so that the same refusal reaches
the HL7 sender (ERR segment), the rejected-input topic and the logs.
"""

from __future__ import annotations

from adapters.hl7.ack import ack_code_for, build_ack
from adapters.hl7.adt import AdtEvent, map_adt, parse_adt
from adapters.hl7.framing import (
    FrameError,
    FrameTooLarge,
    FrameTruncated,
    IdleTimeout,
    read_frame,
    write_frame,
)
from adapters.hl7.message import Message, ParserSettings, parse_message

__all__ = [
    "AdtEvent",
    "FrameError",
    "FrameTooLarge",
    "FrameTruncated",
    "IdleTimeout",
    "Message",
    "ParserSettings",
    "ack_code_for",
    "build_ack",
    "map_adt",
    "parse_adt",
    "parse_message",
    "read_frame",
    "write_frame",
]
