"""Fast checks for FHIR primitive values, each *sound* with respect to fhir.resources.

A fast check returning True guarantees that pydantic (with the fhir_core annotations)
accepts the value; returning False only means "not obviously valid": the caller then
asks the exact pydantic validator for that one leaf (`exact_leaf`). So the fast checks
cover the common JSON shapes (a `str` matching the FHIR regex, a real `bool`, an `int`
in range) and leave every lax-mode coercion (`"true"` for a boolean, `"5"` for an
integer, a Unicode space...) to pydantic itself, which is what makes the whole path
exact rather than "nearly the same".

Why each check implies acceptance (pydantic-core applies `pattern` as an unanchored
Rust regex search; fhir_core's date/time types use Python `re.fullmatch`):
- string `[ \\r\\n\\t\\S]+`: a character that is not `str.isspace()` is not Unicode
  White_Space either, so it matches `\\S`.
- code `^[^\\s]+(\\s[^\\s]+)*$`: our Python pattern only admits non-`isspace` characters
  separated by single ASCII spaces, a subset.
- uri, canonical, url, markdown, xhtml: their patterns match the empty string, so any
  `str` passes.
- dates and times: the fhir_core regex, plus a stricter regex of our own (at most six
  fraction digits, no leap second) and a calendar check, so the inner pydantic
  date/datetime parser accepts the value.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, get_args, get_origin

from annotated_types import Ge, Le

Check = Callable[[Any], bool]

_CODE = re.compile(r"[^\s]+(?: [^\s]+)*")
_ID_DEFAULT_PATTERN = r"^[A-Za-z0-9\-.]+$"
_ID_MAX_DEFAULT = 255
_ID = re.compile(r"[A-Za-z0-9\-.]+")
_OID = re.compile(r"urn:oid:[0-2](?:\.(?:0|[1-9][0-9]*))+")
# A full date-time (dateTime with a time part, or instant) that speedate surely parses.
_DT_FULL = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{1,6})?(?:Z|[+\-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)
_DATE_FULL = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_TIME = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?")
_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _real_day(y: str, m: str, d: str) -> bool:
    """A Gregorian calendar date (the FHIR regexes already bound month and day)."""
    year, month, day = int(y), int(m), int(d)
    if year == 0 or day > _DAYS[month]:
        return False
    return not (month == 2 and day == 29 and (year % 4 or (year % 100 == 0 and year % 400)))


def is_string(v: Any) -> bool:
    return type(v) is str and v != "" and not v.isspace()


def is_any_str(v: Any) -> bool:
    return type(v) is str


def is_code(v: Any) -> bool:
    return type(v) is str and _CODE.fullmatch(v) is not None


def is_oid(v: Any) -> bool:
    return type(v) is str and _OID.fullmatch(v) is not None


def is_boolean(v: Any) -> bool:
    return v is True or v is False


def is_decimal(v: Any) -> bool:
    t = type(v)
    return t is int or (t is float and math.isfinite(v))


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def is_base64(v: Any) -> bool:
    """pydantic's Base64Bytes is `base64.b64decode(value.encode())`, non-validating.

    Canonical base64 (alphabet only, length a multiple of 4, `=`/`==` padding at the
    end) always decodes; that is checked with one C-speed translate (~3 µs for a
    7 KB letter, 5x cheaper than decoding). Anything else is decoded as pydantic does.
    """
    if type(v) is not str or not v.isascii():
        return False
    raw = v.encode("ascii")
    if len(raw) % 4 == 0:
        rest = raw.translate(None, _B64_ALPHABET)
        if not rest or (rest in (b"=", b"==") and raw.endswith(rest)):
            return True
    try:
        binascii.a2b_base64(raw)
    except binascii.Error:
        return False
    return True


def _date_check(fhir_pattern: re.Pattern[str]) -> Check:
    def is_date(v: Any) -> bool:
        if type(v) is not str or fhir_pattern.fullmatch(v) is None:
            return False
        if len(v) in (4, 7):  # partial date: fhir_core keeps the string as is
            return True
        m = _DATE_FULL.fullmatch(v)
        return m is not None and _real_day(*m.groups())

    return is_date


def _datetime_check(fhir_pattern: re.Pattern[str], partial_ok: bool) -> Check:
    def is_datetime(v: Any) -> bool:
        if type(v) is not str or fhir_pattern.fullmatch(v) is None:
            return False
        n = len(v)
        if n in (4, 7):
            return partial_ok
        m = (_DATE_FULL if n == 10 and partial_ok else _DT_FULL).fullmatch(v)
        return m is not None and _real_day(*m.groups())

    return is_datetime


def _time_check(fhir_pattern: re.Pattern[str]) -> Check:
    def is_time(v: Any) -> bool:
        return type(v) is str and fhir_pattern.fullmatch(v) is not None and bool(_TIME.fullmatch(v))

    return is_time


def _int_check(meta: object) -> Check:
    lo, hi = -(2**63), 2**63 - 1
    for c in meta:  # type: ignore[attr-defined] - Integer* are GroupedMetadata
        if isinstance(c, Ge):
            lo = c.ge  # type: ignore[assignment]
        elif isinstance(c, Le):
            hi = c.le  # type: ignore[assignment]

    def is_int(v: Any) -> bool:
        return type(v) is int and lo <= v <= hi

    return is_int


def is_id(v: Any) -> bool:
    return type(v) is str and len(v) <= _ID_MAX_DEFAULT and _ID.fullmatch(v) is not None


def _id_check() -> Check:
    """Only the default id constraints have a fast check; a site that patched
    fhir_core.constraints gets the exact pydantic check for every id."""
    from fhir_core import constraints

    if (
        constraints.TYPES_ID_PATTERN == _ID_DEFAULT_PATTERN
        and constraints.TYPES_ID_MAX_LENGTH == _ID_MAX_DEFAULT
    ):
        return is_id
    return never


def never(v: Any) -> bool:
    """For types without a fast check (uuid): always ask pydantic."""
    return False


def fast_check(leaf: Any) -> Check:
    """The fast check for one primitive annotation (`bool` or `Annotated[base, FHIRType()]`)."""
    if leaf is bool:
        return is_boolean
    if get_origin(leaf) is not Annotated:
        return never
    from fhir_core import types as ft

    for meta in get_args(leaf)[1:]:
        kind = type(meta)
        if kind is ft.String:
            return is_string
        if kind is ft.Code:
            return is_code
        if kind is ft.Id:
            return _id_check()
        if kind in (ft.Uri, ft.Canonical, ft.Url, ft.Markdown, ft.Xhtml):
            return is_any_str
        if kind is ft.Oid:
            return is_oid
        if kind is ft.Decimal:
            return is_decimal
        if kind is ft.Base64Binary:
            return is_base64
        if kind in (ft.Integer, ft.UnsignedInt, ft.PositiveInt, ft.Integer64):
            return _int_check(meta)
        if kind is ft.Instant:
            return _datetime_check(ft.Instant.pattern, partial_ok=False)
        if kind is ft.DateTime:
            return _datetime_check(ft.DateTime.pattern, partial_ok=True)
        if kind is ft.Date:
            return _date_check(ft.Date.pattern)
        if kind is ft.Time:
            return _time_check(ft.Time.pattern)
    return never


@cache
def _adapter(annotation: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(annotation)


def exact(annotation: Any, value: Any) -> bool:
    """pydantic's own verdict on one value of one field annotation (the slow, rare path).

    Any exception counts as a rejection, as in `schemas.validate.structural_issues`:
    odd input can make fhir.resources raise KeyError/TypeError instead of a
    ValidationError, and the reference verdict is "invalid" either way.
    """
    try:
        _adapter(annotation).validate_python(value)
    except Exception:  # noqa: BLE001 - see docstring
        return False
    return True


# Markers the walker inlines instead of calling a closure (optional fields only).
STRING = "string"
ANY_STR = "any-str"
CODE = "code"
ID = "id"
code_match = _CODE.fullmatch
id_match = _ID.fullmatch
ID_MAX = _ID_MAX_DEFAULT  # the ID marker is only used with the default constraints


def inline_marker(leaf: Any, nullable: bool) -> str | None:
    """The marker for fields whose fast check the walker inlines, if any."""
    if not nullable:
        return None
    check = fast_check(leaf)
    return {is_string: STRING, is_any_str: ANY_STR, is_code: CODE, is_id: ID}.get(check)


def field_check(leaf: Any, annotation: Any, nullable: bool) -> Check:
    """The whole verdict on one value of a primitive field: fast check, else None if
    the field is optional, else pydantic. The commonest kinds are inlined (one Python
    call per leaf instead of two: this is the hot loop of the walker)."""
    check = fast_check(leaf)
    if check is is_string:

        def string_field(v: Any) -> bool:
            if type(v) is str and v != "" and not v.isspace():
                return True
            return (nullable and v is None) or exact(annotation, v)

        return string_field
    if check is is_any_str:

        def any_str_field(v: Any) -> bool:
            return type(v) is str or (nullable and v is None) or exact(annotation, v)

        return any_str_field
    if check is is_code:
        code_match = _CODE.fullmatch

        def code_field(v: Any) -> bool:
            if type(v) is str and code_match(v) is not None:
                return True
            return (nullable and v is None) or exact(annotation, v)

        return code_field
    if check is is_boolean:

        def boolean_field(v: Any) -> bool:
            return v is True or v is False or (nullable and v is None) or exact(annotation, v)

        return boolean_field

    def primitive_field(v: Any) -> bool:
        return check(v) or (nullable and v is None) or exact(annotation, v)

    return primitive_field
