"""SQLite persistence of the embedded DMP-like document store.

Why SQLite: the embedded store must keep what was filed across restarts with no server
to install, and a user must be able to look at it. One file under
`<data_dir>/dmp/store.sqlite3`, WAL journal (readers never block the writer), one
connection guarded by a lock and driven from a worker thread (`asyncio.to_thread`), so
the event loop never waits on the disk.

Layout: FHIR resources as JSON (`resources`), business identifiers for conditional
creates (`identifiers`, unique per type/system/value: the database itself refuses a
second document with the same masterIdentifier), a search index of DocumentReferences
(`doc_index`, the ITI-67 parameters) and the documents' bytes (`binaries`, raw, not
base64) for ITI-68.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import orjson

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    type TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (type, id));
CREATE TABLE IF NOT EXISTS identifiers (
    type TEXT NOT NULL, system TEXT NOT NULL, value TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (type, system, value));
CREATE TABLE IF NOT EXISTS doc_index (
    id TEXT PRIMARY KEY, patient_system TEXT NOT NULL, patient_value TEXT NOT NULL,
    type_system TEXT NOT NULL, type_code TEXT NOT NULL, date TEXT NOT NULL,
    status TEXT NOT NULL, binary_id TEXT NOT NULL, title TEXT NOT NULL,
    content_type TEXT NOT NULL, size INTEGER NOT NULL, created TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS doc_by_patient ON doc_index (patient_value, patient_system);
CREATE TABLE IF NOT EXISTS binaries (
    id TEXT PRIMARY KEY, content_type TEXT NOT NULL, data BLOB NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class DocIndex:
    """The searchable facts of one DocumentReference (dates as UTC ISO strings)."""

    id: str
    patient_system: str
    patient_value: str
    type_system: str
    type_code: str
    date: str
    status: str
    binary_id: str
    title: str
    content_type: str
    size: int
    created: str


@dataclass(frozen=True, slots=True)
class DateBound:
    """One `date=` search clause: `op` in eq/ne/ge/gt/le/lt over [start, end)."""

    op: str
    start: str
    end: str


class Tx:
    """The operations a transaction may do, inside one SQLite transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def find(self, rtype: str, system: str, value: str) -> str | None:
        row = self._conn.execute(
            "SELECT id FROM identifiers WHERE type=? AND system=? AND value=?",
            (rtype, system, value),
        ).fetchone()
        return row[0] if row else None

    def binary_of(self, doc_id: str) -> str | None:
        row = self._conn.execute("SELECT binary_id FROM doc_index WHERE id=?", (doc_id,)).fetchone()
        return row[0] if row and row[0] else None

    def put_resource(self, rtype: str, rid: str, body: dict, created: str) -> None:
        self._conn.execute(
            "INSERT INTO resources (type, id, body, created) VALUES (?, ?, ?, ?)",
            (rtype, rid, orjson.dumps(body), created),
        )

    def put_identifier(self, rtype: str, system: str, value: str, rid: str) -> None:
        self._conn.execute(
            "INSERT INTO identifiers (type, system, value, id) VALUES (?, ?, ?, ?)",
            (rtype, system, value, rid),
        )

    def put_binary(self, rid: str, content_type: str, data: bytes) -> None:
        self._conn.execute(
            "INSERT INTO binaries (id, content_type, data) VALUES (?, ?, ?)",
            (rid, content_type, data),
        )

    def put_index(self, idx: DocIndex) -> None:
        self._conn.execute(
            "INSERT INTO doc_index VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                idx.id,
                idx.patient_system,
                idx.patient_value,
                idx.type_system,
                idx.type_code,
                idx.date,
                idx.status,
                idx.binary_id,
                idx.title,
                idx.content_type,
                idx.size,
                idx.created,
            ),
        )


class DocumentDB:
    """The store's database. Thread-safe; every method is blocking (call via to_thread)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # filed means on disk
            self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def integrity(self) -> str:
        """SQLite's own verdict on the file ("ok" when intact): for operators and tests."""
        with self._lock:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def transact(self, work: Callable[[Tx], T]) -> T:
        """Run `work` atomically: its lookups and writes see and make one consistent state
        (a concurrent redelivery of the same ITI-65 waits, then finds the first one)."""
        with self._immediate() as conn:
            return work(Tx(conn))

    def resource(self, rtype: str, rid: str) -> dict | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT body FROM resources WHERE type=? AND id=?", (rtype, rid)
            ).fetchone()
        return orjson.loads(row[0]) if row else None

    def binary(self, rid: str) -> tuple[str, bytes] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT content_type, data FROM binaries WHERE id=?", (rid,)
            ).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def search(
        self,
        *,
        patient_value: str,
        patient_system: str | None = None,
        types: list[tuple[str | None, str]] = (),  # type: ignore[assignment]
        dates: list[DateBound] = (),  # type: ignore[assignment]
        statuses: list[str] = (),  # type: ignore[assignment]
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[DocIndex, dict]]:
        """DocumentReferences of one patient, newest first, with the ITI-67 filters; the id
        breaks ties so that pages (`offset`) neither repeat nor skip a document."""
        sql = [
            "SELECT d.*, r.body FROM doc_index d JOIN resources r",
            "ON r.type='DocumentReference' AND r.id=d.id WHERE d.patient_value=?",
        ]
        args: list[object] = [patient_value]
        if patient_system:
            sql.append("AND d.patient_system=?")
            args.append(patient_system)
        if types:
            ors = []
            for system, code in types:
                ors.append("(d.type_code=?" + (" AND d.type_system=?)" if system else ")"))
                args.extend([code, system] if system else [code])
            sql.append("AND (" + " OR ".join(ors) + ")")
        if statuses:
            sql.append(f"AND d.status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        for bound in dates:
            clause, values = _date_clause(bound)
            sql.append(f"AND {clause}")
            args.extend(values)
        sql.append("ORDER BY d.date DESC, d.created DESC, d.id LIMIT ? OFFSET ?")
        args.extend([limit, offset])
        with self._lock:
            rows = self._conn.execute(" ".join(sql), args).fetchall()
        return [(DocIndex(*row[:12]), orjson.loads(row[12])) for row in rows]

    def count(self, rtype: str) -> int:
        """How many resources of a type are stored (binaries included as "Binary")."""
        if rtype == "Binary":
            sql, args = "SELECT COUNT(*) FROM binaries", ()
        else:
            sql, args = "SELECT COUNT(*) FROM resources WHERE type=?", (rtype,)
        with self._lock:
            return int(self._conn.execute(sql, args).fetchone()[0])


def _date_clause(bound: DateBound) -> tuple[str, list[str]]:
    """FHIR date search over an instant: the value's precision defines [start, end)."""
    match bound.op:
        case "ge":
            return "d.date >= ?", [bound.start]
        case "gt":
            return "d.date >= ?", [bound.end]
        case "le":
            return "d.date < ?", [bound.end]
        case "lt":
            return "d.date < ?", [bound.start]
        case "ne":
            return "(d.date < ? OR d.date >= ?)", [bound.start, bound.end]
        case _:
            return "(d.date >= ? AND d.date < ?)", [bound.start, bound.end]
