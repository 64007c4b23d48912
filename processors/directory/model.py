"""The directory: who is who (RPPS, FINESS, MSSanté mailboxes) and which CPTS covers where.

Pure and in memory: routing asks it per event, so lookups are dict reads, and the same
object is rebuilt identically by every worker by folding the compacted `care.directory`
topic (`Directory.apply`). Entries are frozen, slotted dataclasses validated on creation,
so a bad identifier is refused at import time instead of silently failing to route later.

Identifier rules:
- RPPS: 11 digits (published as idNatPs "8" + RPPS). Only the length is enforced: the
  check-digit rule is not published in the ANS specifications we could consult, and the
  ANS's own FHIR examples (e.g. 10003461033) do not satisfy a Luhn check, so enforcing one
  would refuse data the directory itself publishes.
- FINESS: 9 characters, two digits or "2A"/"2B" (Corsica) then 7 digits; not Luhn-checked
  for the same reason (the Annuaire IG example 754567860 fails Luhn).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeAlias

import orjson

FORMAT_VERSION = 1  # "v" in every record value, for later schema evolution

_RPPS_RE = re.compile(r"\d{11}", re.ASCII)
_FINESS_RE = re.compile(r"(?:\d{2}|2[AB])\d{7}", re.ASCII)
_POSTCODE_RE = re.compile(r"\d{5}", re.ASCII)
_PREFIX_RE = re.compile(r"\d{1,5}", re.ASCII)
_PROFESSION_RE = re.compile(r"\d{2}", re.ASCII)  # NOS TRE_G15 codes: 10, 21, 60…
_MAILBOX_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)


class InvalidEntry(ValueError):
    """An entry that breaks an identifier or format rule (the message says which)."""


class InvalidRecord(ValueError):
    """A topic record that cannot be read as a directory entry."""


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidEntry(message)


def valid_rpps(value: str) -> bool:
    return bool(_RPPS_RE.fullmatch(value))


def valid_finess(value: str) -> bool:
    return bool(_FINESS_RE.fullmatch(value))


def _check_text(name: str, value: str) -> None:
    _need(isinstance(value, str) and bool(value.strip()), f"{name} is required")


def _check_mailbox(name: str, value: str | None) -> None:
    _need(
        value is None or bool(_MAILBOX_RE.fullmatch(value)),
        f"{name} {value!r} is not an e-mail address",
    )


def _check_postcode(value: str | None) -> None:
    _need(
        value is None or bool(_POSTCODE_RE.fullmatch(value)),
        f"postcode must be 5 digits, got {value!r}",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Professional:
    """A health professional by RPPS, with the MSSanté mailbox routing writes to.

    `profession` is a NOS TRE_G15 code ("10" médecin, "21" pharmacien, "60" infirmier);
    `specialty` is free text (specialty tables differ by profession); `finess` is the
    organisation the professional practises in, when it has one (hospital, health centre).
    """

    rpps: str
    family: str
    given: str
    profession: str | None = None
    specialty: str | None = None
    mailbox: str | None = None
    finess: str | None = None
    postcode: str | None = None

    def __post_init__(self) -> None:
        _need(valid_rpps(self.rpps), f"RPPS must be 11 digits, got {self.rpps!r}")
        _check_text("family name", self.family)
        _check_text("given name", self.given)
        _need(
            self.profession is None or bool(_PROFESSION_RE.fullmatch(self.profession)),
            f"profession must be a 2-digit TRE_G15 code, got {self.profession!r}",
        )
        _check_mailbox("mailbox", self.mailbox)
        _need(
            self.finess is None or valid_finess(self.finess),
            f"FINESS must be 9 characters, got {self.finess!r}",
        )
        _check_postcode(self.postcode)

    @property
    def key(self) -> str:
        return f"practitioner/{self.rpps}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Organization:
    """A facility by FINESS (hospital, CPTS, health centre) and its organisational mailbox."""

    finess: str
    name: str
    mailbox: str | None = None
    postcode: str | None = None

    def __post_init__(self) -> None:
        _need(valid_finess(self.finess), f"FINESS must be 9 characters, got {self.finess!r}")
        _check_text("name", self.name)
        _check_mailbox("mailbox", self.mailbox)
        _check_postcode(self.postcode)

    @property
    def key(self) -> str:
        return f"organization/{self.finess}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Territory:
    """A CPTS territory: its coordinator, the facilities and postcode prefixes it covers."""

    id: str
    name: str
    coordinator_name: str
    coordinator_mailbox: str
    finess: tuple[str, ...] = ()
    postcodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _need(
            bool(_ID_RE.fullmatch(self.id)),
            f"territory id must be letters, digits, '.', '_' or '-', got {self.id!r}",
        )
        _check_text("name", self.name)
        _check_text("coordinator name", self.coordinator_name)
        _check_mailbox("coordinator mailbox", self.coordinator_mailbox)
        object.__setattr__(self, "finess", tuple(self.finess))
        object.__setattr__(self, "postcodes", tuple(self.postcodes))
        for f in self.finess:
            _need(valid_finess(f), f"FINESS must be 9 characters, got {f!r}")
        for p in self.postcodes:
            _need(bool(_PREFIX_RE.fullmatch(p)), f"postcode prefix must be 1-5 digits, got {p!r}")

    @property
    def key(self) -> str:
        return f"territory/{self.id}"


Entry: TypeAlias = Professional | Organization | Territory
_KINDS: dict[str, type[Professional] | type[Organization] | type[Territory]] = {
    "practitioner": Professional,
    "organization": Organization,
    "territory": Territory,
}


class TerritoryLike(Protocol):
    """What `territory_from_settings` reads (bus.settings.TerritorySettings)."""

    id: str
    name: str
    coordinator_name: str
    coordinator_mailbox: str
    finess: list[str]
    postcodes: list[str]


def territory_from_settings(t: TerritoryLike) -> Territory:
    """A settings territory as a directory entry (raises InvalidEntry if misconfigured)."""
    return Territory(
        id=t.id,
        name=t.name,
        coordinator_name=t.coordinator_name,
        coordinator_mailbox=t.coordinator_mailbox,
        finess=tuple(t.finess),
        postcodes=tuple(t.postcodes),
    )


# --- records of the compacted topic ------------------------------------------------------
def kind_of(entry: Entry) -> str:
    if isinstance(entry, Professional):
        return "practitioner"
    if isinstance(entry, Organization):
        return "organization"
    return "territory"


def entry_record(entry: Entry) -> tuple[bytes, bytes]:
    """(key, value) of the record holding this entry: one key per identifier, so the
    compacted topic keeps exactly the latest version of each entry."""
    body: dict[str, Any] = {"v": FORMAT_VERSION, "kind": kind_of(entry)}
    for f in fields(entry):
        value = getattr(entry, f.name)
        body[f.name] = list(value) if isinstance(value, tuple) else value
    return entry.key.encode(), orjson.dumps(body)


def tombstone(key: str) -> tuple[bytes, None]:
    """The record deleting an entry (by its key, e.g. "practitioner/10003456125")."""
    return key.encode(), None


def decode_record(key: bytes, value: bytes) -> Entry:
    """The entry a record holds; InvalidRecord if unreadable or the key does not match."""
    try:
        text_key = key.decode()
        body = orjson.loads(value)
    except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise InvalidRecord(f"{key!r}: not a JSON directory record ({exc})") from exc
    if not isinstance(body, dict) or body.get("kind") not in _KINDS:
        raise InvalidRecord(f"{text_key}: no known 'kind' in the record")
    kind = body["kind"]
    cls = _KINDS[kind]
    known = {f.name for f in fields(cls)}
    args = {k: v for k, v in body.items() if k in known}  # newer fields are ignored
    if kind == "territory":
        args["finess"] = tuple(args.get("finess") or ())
        args["postcodes"] = tuple(args.get("postcodes") or ())
    try:
        entry: Entry = cls(**args)
    except (InvalidEntry, TypeError) as exc:
        raise InvalidRecord(f"{text_key}: {exc}") from exc
    if entry.key != text_key:
        raise InvalidRecord(f"record key {text_key!r} does not match its entry {entry.key!r}")
    return entry


# --- the in-memory directory -------------------------------------------------------------
class Directory:
    """Latest state of the directory, with lookups for routing.

    `defaults` (usually the territories from settings) are a base layer: an entry with
    the same key from the topic overrides it, and deleting that entry (tombstone) brings
    the default back, so settings stay the fallback whatever was imported.
    """

    def __init__(self, entries: Iterable[Entry] = (), *, defaults: Iterable[Entry] = ()) -> None:
        self._defaults: dict[str, Entry] = {e.key: e for e in defaults}
        self._entries: dict[str, Entry] = {}
        self._finess_index: dict[str, list[Territory]] = {}
        self._prefix_index: dict[str, list[Territory]] = {}
        self._stale = True
        for e in entries:
            self.put(e)

    # changes
    def put(self, entry: Entry) -> None:
        self._entries[entry.key] = entry
        if isinstance(entry, Territory):
            self._stale = True

    def delete(self, key: str) -> bool:
        """Forget an entry; True if the topic layer had it."""
        gone = self._entries.pop(key, None)
        if isinstance(gone, Territory) or key.startswith("territory/"):
            self._stale = True
        return gone is not None

    def apply(self, key: bytes, value: bytes | None) -> Entry | None:
        """Fold one record of the compacted topic, in offset order: upsert, or delete on a
        tombstone (value None). Returns the entry now stored (None after a delete).
        Raises InvalidRecord for an unreadable record, leaving the directory unchanged."""
        if value is None:
            try:
                self.delete(key.decode())
            except UnicodeDecodeError as exc:
                raise InvalidRecord(f"{key!r}: key is not UTF-8") from exc
            return None
        entry = decode_record(key, value)
        self.put(entry)
        return entry

    # lookups
    def get(self, key: str) -> Entry | None:
        return self._entries.get(key) or self._defaults.get(key)

    def practitioner(self, rpps: str) -> Professional | None:
        found = self.get(f"practitioner/{rpps}")
        return found if isinstance(found, Professional) else None

    def organization(self, finess: str) -> Organization | None:
        found = self.get(f"organization/{finess}")
        return found if isinstance(found, Organization) else None

    def territory(self, territory_id: str) -> Territory | None:
        found = self.get(f"territory/{territory_id}")
        return found if isinstance(found, Territory) else None

    def territories(self) -> list[Territory]:
        merged = {**self._defaults, **self._entries}
        return sorted((e for e in merged.values() if isinstance(e, Territory)), key=lambda t: t.id)

    def territory_for(self, finess: str | None, postcode: str | None) -> Territory | None:
        """The territory whose coordinator handles a case: the one listing the facility
        (FINESS) first, else the longest postcode prefix matching `postcode`, else the
        longest prefix matching the facility's own postcode when the directory knows it.
        Ties go to the smallest territory id, so every worker decides the same."""
        self._reindex()
        if finess and (hits := self._finess_index.get(finess.strip())):
            return hits[0]
        if postcode and (hit := self._by_prefix(postcode)):
            return hit
        if finess and (org := self.organization(finess.strip())) and org.postcode:
            return self._by_prefix(org.postcode)
        return None

    def _by_prefix(self, postcode: str) -> Territory | None:
        code = "".join(postcode.split())
        for n in range(min(len(code), 5), 0, -1):
            if hits := self._prefix_index.get(code[:n]):
                return hits[0]
        return None

    def _reindex(self) -> None:
        if not self._stale:
            return
        self._finess_index, self._prefix_index = {}, {}
        for t in self.territories():  # sorted by id: the first hit is the tie-breaker
            for f in t.finess:
                self._finess_index.setdefault(f, []).append(t)
            for p in t.postcodes:
                self._prefix_index.setdefault(p, []).append(t)
        self._stale = False

    # views
    def entries(self) -> Iterator[Entry]:
        """Every effective entry (topic entries over defaults), in key order."""
        merged = {**self._defaults, **self._entries}
        for key in sorted(merged):
            yield merged[key]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(_KINDS, 0)
        for e in self.entries():
            out[kind_of(e)] += 1
        return out

    def __len__(self) -> int:
        return len({*self._defaults, *self._entries})

    def __contains__(self, key: object) -> bool:
        return key in self._entries or key in self._defaults
