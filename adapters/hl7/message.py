"""A fast, minimal HL7 v2 parser: plain string splits, escape sequences decoded on access.

Why not python-hl7 or hl7apy: measured on a PAM FR ADT^A16, python-hl7 costs ~0.7 ms and
hl7apy ~15 ms per message, a plain split a few µs. The listener parses every inbound
message on the event loop, so the hot path stays a split; the libraries remain available
to tests as independent oracles.

What this parser guarantees (everything else is the mapper's job):

* the message starts with MSH; MSH-1 (field separator) and MSH-2 (encoding characters)
  are sane, else an Issue points at MSH-1 / MSH-2;
* the bytes are decoded with the charset declared in MSH-18 (HL7 table 0211:
  ``ASCII``, ``8859/1``, ``8859/15``, ``UNICODE UTF-8``), or with a configured default
  when MSH-18 is empty (IHE PAM France historically means ISO 8859-1); a byte sequence
  that is not valid in that charset is an Issue on MSH-18, never a silent ``?``;
* segments are split on ``\\r`` (``\\n`` and ``\\r\\n`` tolerated), with hard limits on
  size, segment count and field count so that a hostile frame cannot blow up memory;
* fields are kept raw; repetitions, components and sub-components are split lazily and
  escape sequences (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\ \\.br\\``) decoded only
  at the leaf that is read, so a decoded ``^`` can never be mistaken for a separator.

Field numbering follows HL7: ``msg.get("PID", 3)`` is PID-3; for MSH, MSH-1 is the field
separator itself, so ``msg.value("MSH", 10)`` is the message control id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from schemas.outcome import Issue, IssueCode, ValidationFailed

#: HL7 table 0211 character sets we decode, to Python codecs.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "iso-8859-1",
    "8859/15": "iso-8859-15",
    "UNICODE UTF-8": "utf-8",
}
#: Spellings seen in the field that are not table 0211 but mean one of the above.
_CHARSET_ALIASES: dict[str, str] = {"UTF-8": "UNICODE UTF-8", "UTF8": "UNICODE UTF-8"}


@dataclass(frozen=True, slots=True)
class ParserSettings:
    """Limits and defaults of the parser (a territory may tune them from the settings file).

    `default_charset` applies when MSH-18 is empty: IHE PAM France senders that omit it
    historically send ISO 8859-1.
    """

    default_charset: str = "8859/1"
    max_bytes: int = 1_048_576
    max_segments: int = 500
    max_fields: int = 300
    #: refuse UTF-8 bytes read as ISO 8859 (mojibake in names); the listener sets it
    refuse_utf8_as_8859: bool = False


DEFAULT_SETTINGS = ParserSettings()


@dataclass(frozen=True, slots=True)
class Separators:
    """The delimiters declared in MSH-1 and MSH-2; the ACK reuses them."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it must be written back."""
        return self.component + self.repetition + self.escape + self.subcomponent


DEFAULT_SEPARATORS = Separators()

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_FORMATTING_ESCAPES = frozenset({"H", "N", ".fi", ".nf", ".sk", ".ce"})


def _decode_escape(seq: str, seps: Separators, codec: str) -> str | None:
    """Decode the content of one ``\\...\\`` escape; None means "keep it literally"."""
    if len(seq) == 1:
        ch = {
            "F": seps.field,
            "S": seps.component,
            "T": seps.subcomponent,
            "R": seps.repetition,
            "E": seps.escape,
        }.get(seq)
        if ch is not None:
            return ch
    if seq == ".br" or seq.startswith(".sp"):
        # \.sp<n>\ asks for n blank lines: one newline is enough and cannot be abused.
        return "\n"
    if seq in _FORMATTING_ESCAPES or seq.startswith((".in", ".ti")):
        return ""
    if seq[:1] == "X" and len(seq) > 1:
        try:
            return bytes.fromhex(seq[1:]).decode(codec)
        except ValueError:  # odd length, non-hex or not valid in the charset
            return None
    if seq[:1] in ("C", "M", "Z") and len(seq) > 1:
        # charset switches and locally defined escapes: not supported, dropped
        return ""
    return None


def unescape(text: str, seps: Separators = DEFAULT_SEPARATORS, codec: str = "utf-8") -> str:
    """Decode HL7 escape sequences of one leaf value; unknown sequences stay literal."""
    esc = seps.escape
    if esc not in text:
        return text
    parts = text.split(esc)
    out = [parts[0]]
    i, n = 1, len(parts)
    while i < n:
        if i + 1 < n:
            decoded = _decode_escape(parts[i], seps, codec)
            out.append(esc + parts[i] + esc if decoded is None else decoded)
            out.append(parts[i + 1])
            i += 2
        else:  # an escape character without its closing twin is plain text
            out.append(esc + parts[i])
            i += 1
    return "".join(out)


class Rep:
    """One repetition of a field; components and sub-components are decoded on access."""

    __slots__ = ("_comps", "_msg", "raw")

    def __init__(self, raw: str, msg: Message) -> None:
        self.raw = raw
        self._msg = msg
        self._comps: list[str] | None = None

    def comp(self, i: int = 1, sub: int = 1) -> str:
        """Component `i`, sub-component `sub` (1-based), decoded; '' when absent or ``""``."""
        msg = self._msg
        comps = self._comps
        if comps is None:
            comps = self._comps = self.raw.split(msg.separators.component)
        if i < 1 or i > len(comps):
            return ""
        raw = comps[i - 1]
        if msg._sub in raw:
            subs = raw.split(msg._sub)
            raw = subs[sub - 1] if 1 <= sub <= len(subs) else ""
        elif sub != 1:
            return ""
        if msg._esc in raw:
            return unescape(raw, msg.separators, msg.codec)
        return "" if raw == '""' else raw  # HL7 explicit null: nothing to carry on the bus

    def subs(self, i: int) -> list[str]:
        """All decoded sub-components of component `i`."""
        comps = self.raw.split(self._msg.separators.component)
        if i < 1 or i > len(comps):
            return []
        seps = self._msg.separators
        return [unescape(s, seps, self._msg.codec) for s in comps[i - 1].split(seps.subcomponent)]

    def __str__(self) -> str:
        return self.comp(1)


class Segment:
    """One segment: its id and its raw fields, indexed by HL7 field number."""

    __slots__ = ("_msg", "fields", "name")

    def __init__(self, name: str, fields: list[str], msg: Message) -> None:
        self.name = name
        self.fields = fields  # fields[0] is the segment id, fields[n] is SEG-n
        self._msg = msg

    def raw(self, n: int) -> str:
        """SEG-n undecoded (all repetitions), '' when absent."""
        return self.fields[n] if 0 < n < len(self.fields) else ""

    def reps(self, n: int) -> list[Rep]:
        """The repetitions of SEG-n ([] when empty)."""
        raw = self.raw(n)
        if not raw:
            return []
        if self.name == "MSH" and n <= 2:  # MSH-1/MSH-2 hold the separators themselves
            return [Rep(raw, self._msg)]
        return [Rep(r, self._msg) for r in raw.split(self._msg.separators.repetition)]

    def value(self, n: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
        """One decoded leaf of SEG-n; '' when absent."""
        raw = self.raw(n)
        if not raw:
            return ""
        if self.name == "MSH" and n <= 2:
            return raw
        seps = self._msg.separators
        if seps.repetition in raw:
            reps = raw.split(seps.repetition)
            if rep > len(reps):
                return ""
            raw = reps[rep - 1]
        elif rep != 1:
            return ""
        if seps.component not in raw and seps.subcomponent not in raw:
            if comp != 1 or sub != 1 or raw == '""':
                return ""
            return unescape(raw, seps, self._msg.codec) if seps.escape in raw else raw
        return Rep(raw, self._msg).comp(comp, sub)


class Message:
    """A parsed HL7 v2 message: segments in order plus the separators and charset used."""

    __slots__ = ("_esc", "_index", "_sub", "charset", "codec", "segments", "separators")

    def __init__(self, separators: Separators, charset: str, codec: str) -> None:
        self.separators = separators
        self._esc, self._sub = separators.escape, separators.subcomponent  # hot-path copies
        self.charset = charset  # HL7 name actually used to decode (MSH-18 or the default)
        self.codec = codec  # the Python codec of `charset`
        self.segments: list[Segment] = []
        self._index: dict[str, list[Segment]] = {}

    def _append(self, seg: Segment) -> None:
        self.segments.append(seg)
        self._index.setdefault(seg.name, []).append(seg)

    def all(self, name: str) -> list[Segment]:
        """Every segment with that id, in message order (ROL, OBX…)."""
        return self._index.get(name, [])

    def segment(self, name: str) -> Segment | None:
        """The first segment with that id, or None."""
        found = self._index.get(name)
        return found[0] if found else None

    def get(self, name: str, n: int) -> list[Rep]:
        """The repetitions of field n of the first `name` segment: ``msg.get("PID", 3)``."""
        seg = self.segment(name)
        return seg.reps(n) if seg is not None else []

    def value(self, name: str, n: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
        """One decoded leaf of the first `name` segment: ``msg.value("MSH", 9, 2)``."""
        seg = self.segment(name)
        return seg.value(n, comp, sub, rep) if seg is not None else ""

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    @property
    def control_id(self) -> str:
        """MSH-10 as a whole (an ST: a stray component separator is part of the id)."""
        seg = self.segment("MSH")
        raw = seg.raw(10) if seg is not None else ""
        return unescape(raw, self.separators, self.codec) if self._esc in raw else raw

    @property
    def message_code(self) -> str:
        return self.value("MSH", 9, 1)

    @property
    def trigger_event(self) -> str:
        return self.value("MSH", 9, 2)

    @property
    def version(self) -> str:
        return self.value("MSH", 12)


def _fail(code: IssueCode, text: str, where: str | None = None) -> ValidationFailed:
    return ValidationFailed([Issue(code, text, where)])


def _is_separator(ch: int) -> bool:
    """A delimiter must be visible ASCII punctuation (never a letter, digit or space)."""
    return 0x21 <= ch <= 0x7E and not chr(ch).isalnum()


def _read_header(raw: bytes) -> tuple[Separators, str]:
    """Separators and the MSH-18 value, read from the undecoded MSH segment.

    MSH is ASCII in every supported charset, so it can be read before decoding; that is
    how the charset of the rest of the message is known.
    """
    if not raw.startswith(b"MSH"):
        raise _fail(IssueCode.STRUCTURE, "the message does not start with an MSH segment", "MSH")
    if len(raw) < 8 or not _is_separator(raw[3]):
        raise _fail(IssueCode.STRUCTURE, "MSH-1 is not a valid field separator", "MSH-1")
    fs = raw[3:4]
    end = min((p for p in (raw.find(b"\r"), raw.find(b"\n")) if p != -1), default=len(raw))
    parts = raw[:end].split(fs)
    enc = parts[1] if len(parts) > 1 else b""
    if (
        len(enc) not in (4, 5)  # 5: HL7 2.7 truncation character, tolerated and ignored
        or not all(_is_separator(c) for c in enc)
        or len(set(enc[:4])) != 4
        or fs[0] in enc
    ):
        raise _fail(IssueCode.STRUCTURE, "MSH-2 must hold 4 distinct encoding characters", "MSH-2")
    seps = Separators(
        field=fs.decode(),
        component=chr(enc[0]),
        repetition=chr(enc[1]),
        escape=chr(enc[2]),
        subcomponent=chr(enc[3]),
    )
    charset = b""
    if len(parts) > 17:  # parts[n-1] is MSH-n (MSH-1 is the separator itself)
        charset = parts[17].split(enc[1:2])[0].strip()
    try:
        return seps, charset.decode("ascii")
    except UnicodeDecodeError:
        raise _fail(IssueCode.CODE_INVALID, "MSH-18 is not in HL7 table 0211", "MSH-18") from None


_UTF8_LATIN = re.compile(rb"[\xc3\xc5][\x80-\xbf]")


def _is_utf8_text(raw: bytes) -> bool:
    """Bytes that decode as UTF-8 and hold UTF-8 accented letters (é = C3 A9, œ = C5 93):
    in ISO 8859 that reads "Ã©", "Å\x93", never seen in real names and addresses."""
    if _UTF8_LATIN.search(raw) is None:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _resolve_charset(declared: str, settings: ParserSettings) -> tuple[str, str]:
    name = declared.upper() or settings.default_charset
    name = _CHARSET_ALIASES.get(name, name)
    codec = CHARSETS.get(name)
    if codec is None:
        supported = ", ".join(CHARSETS)
        raise _fail(IssueCode.CODE_INVALID, f"unsupported charset ({supported})", "MSH-18")
    return name, codec


def parse_message(data: bytes | str, settings: ParserSettings = DEFAULT_SETTINGS) -> Message:
    """Parse one HL7 v2 message (the payload of one MLLP frame).

    Raises `ValidationFailed` carrying every structural Issue found; never anything else,
    whatever the input (property-tested).
    """
    if len(data) > settings.max_bytes:
        raise _fail(IssueCode.TOO_LONG, f"message exceeds {settings.max_bytes} bytes")
    if isinstance(data, str):
        text = data.lstrip("\ufeff\r\n\t ")
        first_line = text.split("\r", 1)[0].split("\n", 1)[0]
        seps, declared = _read_header(first_line.encode("utf-8", "surrogatepass"))
        charset, codec = _resolve_charset(declared, settings)
    else:
        raw = bytes(data).lstrip(b"\r\n\t ")
        if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM some Windows senders prepend
            raw = raw[3:]
        seps, declared = _read_header(raw)
        charset, codec = _resolve_charset(declared, settings)
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError as exc:
            raise _fail(
                IssueCode.VALUE,
                f"the message is not valid {charset} (byte offset {exc.start}); "
                "declare the right character set in MSH-18",
                "MSH-18",
            ) from None
        if settings.refuse_utf8_as_8859 and codec.startswith("iso-8859") and _is_utf8_text(raw):
            # every byte is valid ISO 8859, so UTF-8 sent under 8859/1 (or with MSH-18
            # empty) would silently become "HÃ©lÃ¨ne": a wrong patient name, refused
            raise _fail(
                IssueCode.VALUE,
                f"the message is read as {charset} but its bytes are UTF-8; "
                "declare UNICODE UTF-8 in MSH-18",
                "MSH-18",
            )
    return _split(text, seps, charset, codec, settings)


def _split(
    text: str, seps: Separators, charset: str, codec: str, settings: ParserSettings
) -> Message:
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    lines = [s for s in text.split("\r") if s and not s.isspace()]
    if len(lines) > settings.max_segments:
        raise _fail(IssueCode.TOO_LONG, f"more than {settings.max_segments} segments")
    msg = Message(seps, charset, codec)
    fs = seps.field
    issues: list[Issue] = []
    for number, line in enumerate(lines, start=1):
        name = line[:3]
        if not (_SEGMENT_ID.fullmatch(name) and line[3:4] in ("", fs)):
            issues.append(Issue(IssueCode.STRUCTURE, f"segment #{number} has no valid id"))
            continue
        fields = line.split(fs)
        if len(fields) - 1 > settings.max_fields:
            issues.append(Issue(IssueCode.TOO_LONG, f"over {settings.max_fields} fields", name))
            continue
        if name == "MSH":
            if number != 1:
                issues.append(Issue(IssueCode.STRUCTURE, "batches are not supported", "MSH"))
                continue
            fields.insert(1, fs)
        msg._append(Segment(name, fields, msg))
    if issues:
        raise ValidationFailed(issues)
    return msg
