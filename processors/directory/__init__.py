"""The practitioner / organisation / territory directory routing reads.

Pure model and importers (`model`, `importers`) + the Kafka side (`feed`): imports are
published to the compacted `care.directory` topic and every worker folds it into an
in-memory `Directory`. Formats and rules: docs/directory.md.
"""

from processors.directory.importers import (
    ImportIssue,
    ImportResult,
    from_bytes,
    from_csv,
    from_fhir_bundle,
)
from processors.directory.model import (
    Directory,
    Entry,
    InvalidEntry,
    InvalidRecord,
    Organization,
    Professional,
    Territory,
    decode_record,
    entry_record,
    territory_from_settings,
    tombstone,
)

__all__ = [
    "Directory",
    "Entry",
    "ImportIssue",
    "ImportResult",
    "InvalidEntry",
    "InvalidRecord",
    "Organization",
    "Professional",
    "Territory",
    "decode_record",
    "entry_record",
    "from_bytes",
    "from_csv",
    "from_fhir_bundle",
    "territory_from_settings",
    "tombstone",
]
