"""The email policy CareBus builds mails with: the stdlib default policy, made cheap.

`policy.default` recreates a header class on every header and re-parses and refolds
every header at every flatten; on a mail that was ~half of its ~7 ms of CPU. This policy
keeps the stdlib's behaviour (same bytes, same CR/LF refusal: tests/unit/
test_mail_build.py compares both) and memoises what is the same from mail to mail.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from email.headerregistry import (
    AddressHeader,
    BaseHeader,
    DateHeader,
    HeaderRegistry,
    MessageIDHeader,
    UnstructuredHeader,
)
from email.policy import EmailPolicy
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

#: headers whose values come from code or configuration (see `_HeaderFactory`)
_FIXED = frozenset({"mime-version", "content-type", "content-transfer-encoding"})
_FIXED |= {"content-disposition", "from"}
#: printable ASCII words separated by single spaces
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")
_DOT_ATOM = r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
_PLAIN_MSG_ID = re.compile(f"<{_DOT_ATOM}@{_DOT_ATOM}>")
PLAIN_ADDRESS = re.compile(f"{_DOT_ATOM}@{_DOT_ATOM}")


def _fixed(name: str, value: str) -> bool:
    """A value written by code or configuration, which mails share (multipart
    Content-Types excepted: their boundary is per mail)."""
    return name.lower() in _FIXED and not value.lower().startswith("multipart/")


class _HeaderFactory(HeaderRegistry):
    """The stdlib header registry, with two memos.

    - `HeaderRegistry.__getitem__` builds a new class with `type()` for every header
      set or read (a fifth of a mail's build time); the class depends only on the name.
    - `_fixed` headers take a few values (`1.0`, `base64`, `text/plain; charset="utf-8"`,
      an attachment's type and LOINC-derived file name, the sender) that the content
      manager and the generator set and read again several times per mail: each is
      parsed once. Header objects are immutable, so mails can share them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}
        self._fixed = functools.lru_cache(maxsize=256)(super().__call__)

    def map_to_type(self, name: str, cls: type[BaseHeader]) -> None:
        super().map_to_type(name, cls)
        self._classes.clear()
        self._fixed.cache_clear()

    def __reduce__(self) -> tuple[type[_HeaderFactory], tuple[()]]:
        return (_HeaderFactory, ())  # a copy or an unpickled mail starts with empty memos

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(key)
        return cls

    def __call__(self, name: str, value: Any) -> BaseHeader:
        if isinstance(value, str) and _fixed(name, value):
            return self._fixed(name, value)
        return super().__call__(name, value)


class _MailPolicy(EmailPolicy):
    """`policy.default`, storing verbatim the values whose fold is `Name: value`.

    Such a value is kept as the parser keeps a received header (parsed if read) rather
    than parsed now and refolded by every flatten (most of the generator's time). A
    value qualifies when it is one line of printable ASCII words separated by single
    spaces, without `=?`, and either
    - its header is unstructured (X-…, References…): folding gives the value itself;
    - it is a bare address or a Message-ID (`dot-atom@dot-atom`, `<…>`), or a Date in
      the canonical form `format_datetime` writes: the very text these headers fold;
    - it is a `_fixed` value whose fold was checked once to be exactly that line.
    Anything else, CR/LF refusal included, is `EmailPolicy`'s own handling.
    """

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if isinstance(value, str) and self._verbatim(name, value):
            return (name, value)
        return super().header_store_parse(name, value)

    def _verbatim(self, name: str, value: str) -> bool:
        if (
            len(name) + 2 + len(value) > (self.max_line_length or sys.maxsize)
            or "=?" in value
            or not _PLAIN.fullmatch(value)
        ):
            return False
        if self._grammar(name)(value):
            return True
        return _fixed(name, value) and self._folds_verbatim(name, value)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one module-level policy, never freed
    def _grammar(self, name: str) -> Callable[[str], bool]:
        """Which plain values of this header fold to themselves, by its class."""
        kind = self.header_factory[name]  # type: ignore[index]
        if issubclass(kind, UnstructuredHeader):
            return bool
        if issubclass(kind, MessageIDHeader):
            return lambda value: bool(_PLAIN_MSG_ID.fullmatch(value))
        if issubclass(kind, AddressHeader):
            return lambda value: bool(PLAIN_ADDRESS.fullmatch(value))
        if issubclass(kind, DateHeader):
            return _canonical_date
        return lambda value: False

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one module-level policy, never freed
    def _folds_verbatim(self, name: str, value: str) -> bool:
        header = super().header_store_parse(name, value)[1]
        return bool(header.fold(policy=self) == f"{name}: {value}{self.linesep}")


def _canonical_date(value: str) -> bool:
    try:
        return bool(format_datetime(parsedate_to_datetime(value)) == value)
    except (TypeError, ValueError):
        return False


#: `policy.default` (what `EmailMessage()` uses) with the above; mails built here carry it
POLICY = _MailPolicy(header_factory=_HeaderFactory())
