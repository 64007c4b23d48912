"""The one-pass scan and the counted duplicate-name check, against the exact second parse.

The count is a proof only under its stated conditions (no backslash, no spaced colon);
these tests aim at the places it could go wrong: escaped quotes, strings beginning with
a colon, keys starting or ending with one, whitespace, deep and wide trees.
"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.json_scan import DuplicateName, _unique_pairs, check_unique_names, scan


def has_duplicate(data: bytes) -> bool:
    """The reference: the stdlib parser with a pairs hook that sees every name written."""
    try:
        json.loads(data, object_pairs_hook=_unique_pairs)
    except ValueError:
        return True
    return False


def counted(data: bytes) -> bool:
    try:
        check_unique_names(data, scan(orjson.loads(data)).keys)
    except DuplicateName:
        return True
    return False


@pytest.mark.parametrize(
    ("data", "duplicate"),
    [
        (b'{"a": 1, "b": 2}', False),
        (b'{"a": 1, "a": 2}', True),
        (b'{"a":1,"b":{"c":1,"c":1}}', True),
        (b'{"a": ":x", "a": 1}', True),  # a value opening with a colon: overcount
        (b'{":a": 1, ":a": 2}', True),  # a key opening with a colon
        (b'{"a:": 1, "b": ":"}', False),
        (b'{"a" : 1, "a" : 2}', True),  # spaced colons: the count would miss them
        (b'{"a\\"": 1, "a\\"": 2}', True),  # escaped quote inside a key
        (b'{"a\\\\": 1, "b": 2}', False),  # a key ending with an escaped backslash
        (b'{"a\\\\": 1, "a\\\\": 2}', True),
        (b'{"x": "he said \\":\\" twice", "x": 0}', True),
        (b'[{"a": 1}, {"a": 1}]', False),  # same name in two objects is fine
        (b'{"r": [{"reference": "urn:1"}, {"reference": "urn:1"}]}', False),
    ],
)
def test_counted_check_agrees_with_the_exact_parse(data: bytes, duplicate: bool) -> None:
    assert has_duplicate(data) is duplicate
    assert counted(data) is duplicate


def test_the_duplicated_name_is_reported() -> None:
    with pytest.raises(DuplicateName) as caught:
        check_unique_names(b'{"id": "1", "id": "2"}', 1)
    assert caught.value.name == "id"


def test_scan_counts_keys_collects_references_and_depth() -> None:
    tree = {"a": [{"reference": "urn:x", "b": {"reference": 3}}], "c": {"reference": "#c"}}
    seen = scan(tree)
    assert seen.keys == 6
    assert sorted(seen.references) == ["#c", "urn:x"]  # a non-string reference is not one
    assert seen.depth == 3  # root 0 → list 1 → dict 2 → dict 3
    assert scan(None).depth == -1 and scan(None).keys == 0
    assert scan([]).depth == 0


json_text = st.text(
    alphabet=st.sampled_from(["a", "b", ":", '"', "\\", " ", "é", "{", "}"]), max_size=4
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | json_text,
    lambda inner: (
        st.lists(inner, max_size=3) | st.lists(st.tuples(json_text, inner), max_size=4)
    ),  # pairs: names may repeat
    max_leaves=20,
)


def dump(value: object, spaced: bool) -> str:
    """JSON text in which an object is a list of pairs, so a name can be written twice."""
    colon = " : " if spaced else ":"
    if isinstance(value, list) and value and all(isinstance(x, tuple) for x in value):
        return "{" + ",".join(json.dumps(k) + colon + dump(v, spaced) for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, spaced) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@settings(max_examples=400, deadline=None)
@given(value=json_values, spaced=st.booleans())
def test_counted_check_never_disagrees_with_the_exact_parse(value: object, spaced: bool) -> None:
    data = dump(value, spaced).encode()
    assert counted(data) is has_duplicate(data), data
