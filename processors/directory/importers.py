"""Directory imports: an Annuaire Santé FHIR Bundle or a simple CSV → entries + precise errors.

Pure (bytes/text in, entries out) so that `carebus directory import` and the tests share
it. An import never stops at the first problem: every broken resource or line is
reported with where it is, and the good ones are still imported, because a national
extract with one bad line must not block a territory's routing. Formats: docs/directory.md.
"""

from __future__ import annotations

import csv
import io

from processors.directory.annuaire import from_fhir_bundle
from processors.directory.model import Entry, InvalidEntry, Organization, Professional, Territory
from processors.directory.results import Collector, ImportIssue, ImportResult

__all__ = [
    "CSV_COLUMNS",
    "ImportIssue",
    "ImportResult",
    "from_bytes",
    "from_csv",
    "from_fhir_bundle",
]

CSV_COLUMNS = (
    "kind", "id", "family", "given", "name", "profession", "specialty", "mailbox", "finess",
    "postcode",
)  # fmt: skip


def from_bytes(data: bytes, filename: str = "") -> ImportResult:
    """Import a file's content: FHIR JSON for `.json` (or content starting with `{`),
    CSV (UTF-8, BOM tolerated) otherwise."""
    name = filename.lower()
    if name.endswith(".json") or (not name.endswith(".csv") and data.lstrip()[:1] == b"{"):
        return from_fhir_bundle(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return ImportResult((), (ImportIssue(f"line {line}", f"not UTF-8 ({exc.reason})"),))
    return from_csv(text)


def from_csv(text: str) -> ImportResult:
    """`kind;id;family;given;name;profession;specialty;mailbox;finess;postcode` rows (';' or
    ',' separated, header first, any column order, `#` comment lines), one entry a row."""
    out = Collector()
    text = text.removeprefix("\ufeff")
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), "")
    delimiter = ";" if first.count(";") >= first.count(",") and ";" in first else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    for row in reader:
        where = f"line {reader.line_num}"
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [c.strip().lower() for c in row]
            unknown = [c for c in header if c not in CSV_COLUMNS]
            if unknown:
                out.error(where, f"unknown column(s) {unknown}; known: {', '.join(CSV_COLUMNS)}")
            if "kind" not in header or "id" not in header:
                out.error(where, "the header needs at least the columns 'kind' and 'id'")
                return out.result()
            continue
        if len(row) != len(header):
            out.error(where, f"{len(row)} fields, the header has {len(header)}")
            continue
        cells = {h: (v.strip() or None) for h, v in zip(header, row, strict=True)}
        try:
            entry = _csv_entry(cells)
        except InvalidEntry as exc:
            out.error(where, str(exc))
            continue
        out.add(where, entry)
    if header is None:
        out.error("line 1", "no header row (kind;id;family;given;name;…)")
    return out.result()


def _csv_entry(c: dict[str, str | None]) -> Entry:
    kind = (c.get("kind") or "").lower()
    ident = c.get("id") or ""
    if kind == "practitioner":
        if len(ident) == 12 and ident.startswith("8"):
            ident = ident[1:]  # idNatPs given instead of RPPS
        return Professional(
            rpps=ident,
            family=c.get("family") or "",
            given=c.get("given") or "",
            profession=c.get("profession"),
            specialty=c.get("specialty"),
            mailbox=c.get("mailbox"),
            finess=c.get("finess"),
            postcode=c.get("postcode"),
        )
    if kind in ("organization", "organisation"):
        if len(ident) == 10 and ident.startswith("1"):
            ident = ident[1:]  # idNatStruct given instead of FINESS
        return Organization(
            finess=ident,
            name=c.get("name") or "",
            mailbox=c.get("mailbox"),
            postcode=c.get("postcode"),
        )
    if kind == "territory":
        coordinator = " ".join(p for p in (c.get("given"), c.get("family")) if p)
        if not coordinator:
            raise InvalidEntry("coordinator name (columns 'given', 'family') is required")
        if not c.get("mailbox"):
            raise InvalidEntry("coordinator mailbox (column 'mailbox') is required")
        return Territory(
            id=ident,
            name=c.get("name") or "",
            coordinator_name=coordinator,
            coordinator_mailbox=c.get("mailbox") or "",
            finess=tuple((c.get("finess") or "").split()),
            postcodes=tuple((c.get("postcode") or "").split()),
        )
    raise InvalidEntry(f"kind {kind!r} is not practitioner, organization or territory")
