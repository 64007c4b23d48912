"""What an import yields: entries, and every problem with where it is.

Shared by both import formats so that the CLI reports FHIR and CSV problems alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from processors.directory.model import Entry, kind_of


@dataclass(frozen=True, slots=True)
class ImportIssue:
    """One problem, located (`Bundle.entry[3] (Practitioner/p1)`, `line 7`)."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The entries an import yields; `errors` are refused data, `warnings` are data
    deliberately left out or overridden (ADELI-only professional, duplicate line…)."""

    entries: tuple[Entry, ...]
    errors: tuple[ImportIssue, ...] = ()
    warnings: tuple[ImportIssue, ...] = ()

    def counts(self) -> dict[str, int]:
        out = {"practitioner": 0, "organization": 0, "territory": 0}
        for e in self.entries:
            out[kind_of(e)] += 1
        return out


@dataclass
class Collector:
    """Accumulates entries (last one wins per key, with a warning) and problems."""

    found: dict[str, tuple[str, Entry]] = field(default_factory=dict)
    errors: list[ImportIssue] = field(default_factory=list)
    warnings: list[ImportIssue] = field(default_factory=list)

    def add(self, where: str, entry: Entry) -> None:
        if entry.key in self.found:
            first = self.found[entry.key][0]
            self.warnings.append(ImportIssue(where, f"{entry.key} also at {first}; this one wins"))
        self.found[entry.key] = (where, entry)

    def error(self, where: str, message: str) -> None:
        self.errors.append(ImportIssue(where, message))

    def result(self) -> ImportResult:
        entries = tuple(e for _, e in self.found.values())
        return ImportResult(entries, tuple(self.errors), tuple(self.warnings))
