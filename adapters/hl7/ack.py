"""Build the HL7 v2.5 acknowledgement (original mode) for an inbound message, as bytes.

The ACK answers in the sender's own dialect: same separators, same character set (MSH-18
echoed, same codec), sender and receiver swapped, ``MSH-9 = ACK^<trigger>^ACK``, a fresh
MSH-10, ``MSH-12 = 2.5``, ``MSA-1`` AA/AE/AR and ``MSA-2`` = the incoming MSH-10 (the
CareBus external contract). For AE/AR, one ERR segment per `Issue`:
ERR-2 error location ``SEG^seq^field[^rep^comp]``, ERR-3 HL7 table 0357 code, ERR-4
severity, ERR-5 the FHIR issue type (so the same refusal is recognisable on every
channel), ERR-8 the user message, escaped.

An ACK is produced even for bytes that cannot be parsed at all: separators and MSH-10 are
sniffed from the first line when possible, else MSA-2 stays empty and MSA-1 is AR.
Nothing from the message body is copied, so no patient data can leak into an ACK; the
`Issue` diagnostics are written by CareBus and never quote field values.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Literal

from adapters.hl7.message import (
    CHARSETS,
    DEFAULT_SEPARATORS,
    DEFAULT_SETTINGS,
    Message,
    ParserSettings,
    Separators,
    parse_message,
)
from schemas.outcome import Issue, IssueCode, ValidationFailed

AckCode = Literal["AA", "AE", "AR"]

#: HL7 table 0357 (message error condition codes), v2.5.
ERROR_TEXT: dict[str, str] = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported version id",
    "203": "Unsupported processing id",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}
_SEVERITY = {"fatal": "E", "error": "E", "warning": "W", "information": "I"}
#: Issue codes meaning "this message cannot be accepted as such": AR rather than AE.
_REJECT = frozenset({IssueCode.STRUCTURE, IssueCode.NOT_SUPPORTED, IssueCode.TOO_LONG})
_LOCATION = re.compile(r"([A-Z][A-Z0-9]{2})(?:-(\d{1,3})(?:\.(\d{1,3}))?)?")
_SAFE = re.compile(r"[\x20-\x7e]{1,199}")  # what may be echoed from an unparsable MSH


def ack_code_for(issues: Iterable[Issue]) -> AckCode:
    """AA without issues; AR when the message itself is unacceptable; AE otherwise.

    HL7 original mode: AR = rejected on its envelope (structure, type, event, version,
    size), AE = accepted envelope but an application error (missing data, invalid value,
    broker unavailable: the sender keeps the message and may retry).
    """
    codes = {i.code for i in issues if i.severity in ("fatal", "error")}
    if not codes:
        return "AA"
    return "AR" if codes & _REJECT else "AE"


def hl7_error_code(issue: Issue) -> str:
    """Map an Issue to HL7 table 0357."""
    where = issue.expression or ""
    m = _LOCATION.fullmatch(where)
    field = m and m[2]
    match issue.code:
        case IssueCode.REQUIRED:
            return "101" if field else "100"
        case IssueCode.STRUCTURE:
            return "102" if field else "100"
        case IssueCode.VALUE | IssueCode.TOO_LONG:
            return "102"
        case IssueCode.CODE_INVALID:
            return "103"
        case IssueCode.NOT_SUPPORTED:
            if where == "MSH-9.1":
                return "200"
            return {"MSH-12": "202", "MSH-11": "203"}.get(where, "201")
        case IssueCode.DUPLICATE:
            return "205"
        case _:
            return "207"


def error_location(expression: str | None, component: str = "^") -> str:
    """ERR-2 (ERL): ``PID-3`` → ``PID^1^3``; ``MSH-9.2`` → ``MSH^1^9^1^2``; unknown → ''."""
    m = _LOCATION.fullmatch(expression or "")
    if m is None:
        return ""
    seg, field, comp = m.groups()
    parts = [seg, "1"] + ([field] if field else []) + (["1", comp] if comp else [])
    return component.join(parts)


def escape(text: str, seps: Separators = DEFAULT_SEPARATORS) -> str:
    """Escape free text for one field; line breaks become ``\\.br\\``."""
    e = seps.escape
    out = text.replace(e, f"{e}E{e}")
    specials = seps.field + seps.component + seps.subcomponent + seps.repetition
    for ch, code in zip(specials, "FSTR", strict=True):
        out = out.replace(ch, f"{e}{code}{e}")
    out = out.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{e}.br{e}")
    return _printable(out)


def _printable(text: str) -> str:
    """Control characters (CR, 0x0B, 0x1C…) would break the segment or the MLLP frame."""
    return text if text.isprintable() else "".join(c if c.isprintable() else " " for c in text)


class _Header:
    """What the ACK echoes from the incoming MSH (all optional for broken input)."""

    def __init__(self, seps: Separators, charset: str, codec: str) -> None:
        self.seps, self.charset, self.codec = seps, charset, codec
        self.fields: dict[int, str] = {}  # MSH-n raw (already in the sender's dialect)

    @classmethod
    def from_message(cls, msg: Message) -> _Header:
        h = cls(msg.separators, msg.charset, msg.codec)
        seg = msg.segment("MSH")
        if seg is not None:
            h.fields = {n: _printable(seg.raw(n)) for n in (3, 4, 5, 6, 11, 17, 18)}
            h.fields[9] = _printable(seg.value(9, 2))
            h.fields[10] = _printable(seg.raw(10))  # echoed exactly as received
        return h

    @classmethod
    def sniff(cls, data: bytes, settings: ParserSettings) -> _Header:
        """Best effort on bytes the parser refused: read only the first MSH line."""
        raw = data.lstrip(b"\r\n\t ").removeprefix(b"\xef\xbb\xbf")
        name = settings.default_charset
        h = cls(DEFAULT_SEPARATORS, name, CHARSETS.get(name, "iso-8859-1"))
        line = raw.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("ascii", "replace")
        if not line.startswith("MSH") or len(line) < 8:
            return h
        fs, enc = line[3], line[4:8]
        candidates = fs + enc
        if len(set(candidates)) == 5 and all(
            0x21 <= ord(c) <= 0x7E and not c.isalnum() for c in candidates
        ):
            h.seps = Separators(fs, enc[0], enc[1], enc[2], enc[3])
            parts = line.split(fs) + [""] * 10  # parts[n-1] is MSH-n
            for n, raw in ((3, parts[2]), (4, parts[3]), (5, parts[4]), (6, parts[5]),
                           (9, parts[8].split(enc[0])[1] if enc[0] in parts[8] else ""),
                           (10, parts[9])):  # fmt: skip
                if _SAFE.fullmatch(raw) and enc[2] not in raw:
                    h.fields[n] = raw
        return h


def build_ack(
    incoming: Message | bytes,
    issues: Sequence[Issue] = (),
    *,
    code: AckCode | None = None,
    control_id: str | None = None,
    now: datetime | None = None,
    settings: ParserSettings = DEFAULT_SETTINGS,
) -> bytes:
    """The ACK for `incoming` (a parsed message, or the raw frame payload).

    `code` defaults to `ack_code_for(issues)`. Raw bytes that do not parse get an AR
    carrying the parser's own issues (unless `issues` were given). Always returns bytes
    that `parse_message` accepts.
    """
    if isinstance(incoming, Message):
        header = _Header.from_message(incoming)
    else:
        try:
            header = _Header.from_message(parse_message(incoming, settings))
        except ValidationFailed as exc:
            header = _Header.sniff(bytes(incoming), settings)
            issues = tuple(issues) or exc.issues
            code = code if code == "AE" else "AR"
    code = code or ack_code_for(issues)
    seps, f = header.seps, header.fields
    fs, cs = seps.field, seps.component
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z")
    trigger = f.get(9, "")
    msh = [
        "MSH",
        seps.encoding_characters,
        f.get(5, ""),  # we answer as the application the sender addressed
        f.get(6, ""),
        f.get(3, ""),
        f.get(4, ""),
        stamp,
        "",
        f"ACK{cs}{escape(trigger, seps)}{cs}ACK",
        escape(control_id or secrets.token_hex(10), seps),
        f.get(11) or "P",
        "2.5",
        "",
        "",
        "",
        "",
        f.get(17, ""),
        f.get(18, ""),
    ]
    while msh[-1] == "":
        msh.pop()
    segments = [fs.join(msh), fs.join(["MSA", code, f.get(10, "")])]
    if code != "AA":
        for issue in issues:
            err = hl7_error_code(issue)
            segments.append(
                fs.join(
                    [
                        "ERR",
                        "",
                        error_location(issue.expression, cs),
                        f"{err}{cs}{ERROR_TEXT.get(err, '')}{cs}HL70357",
                        _SEVERITY.get(issue.severity, "E"),
                        escape(str(issue.code), seps),
                        "",
                        "",
                        escape(issue.diagnostics, seps),
                    ]
                )
            )
    return ("\r".join(segments) + "\r").encode(header.codec, "replace")
