"""The walker: judges a plain JSON dict against the compiled tables.

Every check answers True (fhir.resources accepts), False (it rejects) or, for a model,
None (not sure: a construct the table does not mirror, e.g. a key spelled with the
python field name). An unsure subtree is handed to pydantic for *that field only*
(`exact`), so a single odd element costs one small pydantic call, not a full
validation. What is mirrored, and where fhir.resources does it:

- keys: JSON aliases, `fhir_comments`, `resourceType`/`resource_type` (popped and
  compared in FHIRAbstractModel.__init__), anything else is `extra="forbid"`;
- nulls: allowed for optional fields and in primitive lists; refused in lists of
  complex types (`reject_null_complex_elements`);
- required: pydantic-required keys, required primitives unless a `_field` extension
  carries extensions (`_validate_required_primitive_elements`), choice groups
  (`_validate_one_of_many`), FHIRPrimitiveExtension needing id/extension/fhir_comments;
- Resource-typed fields dispatch on `resourceType` like FhirElementOrResourceBase.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas.fastfhir.primitives import (
    ANY_STR,
    CODE,
    ID,
    ID_MAX,
    STRING,
    code_match,
    exact,
    fast_check,
    field_check,
    id_match,
    inline_marker,
)
from schemas.fastfhir.tables import (
    COMMENTS,
    MODEL,
    MODEL_LIST,
    PRIM,
    PRIM_LIST,
    RES,
    RES_LIST,
    Field,
    Model,
    resource_model,
)

Checker = Callable[[Any], bool]


class ModelList:
    """Marker for an optional list of sub-models (no nulls allowed): inlined too."""

    __slots__ = ("model",)

    def __init__(self, model: Model) -> None:
        self.model = model


def _prepare(m: Model) -> None:
    if not m.ready:
        m.build()
    if m.opaque:
        return
    m.checks = {key: _checker(f) for key, f in m.fields.items()}
    fast: dict[str, Any] = {}
    for key, f in m.fields.items():
        marker = inline_marker(f.target, f.nullable) if f.kind == PRIM else None
        if marker is not None:
            fast[key] = marker
        elif f.kind == MODEL and f.nullable:
            fast[key] = f.target
        elif f.kind == MODEL_LIST and f.nullable and f.null_item == 0:
            fast[key] = ModelList(f.target)
        else:
            fast[key] = m.checks[key]
    m.fast = fast


def check_model(m: Model, d: dict) -> bool | None:
    """Verdict on one dict validated as model `m`; None when unsure.

    The hot loop: the commonest field shapes (optional string, uri-like and code
    primitives, optional sub-models) are checked inline; a value failing the inline
    check, and every other field, goes through its full closure in `m.checks`.
    """
    fast = m.fast
    if fast is None:
        _prepare(m)
        fast = m.fast
        if fast is None:  # opaque
            return None
    for k, v in d.items():
        c = fast.get(k)
        if c is STRING:
            if type(v) is str and v != "" and not v.isspace():
                continue
        elif c is ANY_STR:
            if type(v) is str:
                continue
        elif type(c) is Model:
            if type(v) is dict:
                r = check_model(c, v)
                if r:
                    continue
                if r is False:
                    return False
        elif type(c) is ModelList:
            if type(v) is list:
                sub = c.model
                for x in v:
                    if type(x) is not dict:
                        break
                    r = check_model(sub, x)
                    if not r:
                        if r is False:
                            return False
                        break
                else:
                    continue
        elif c is CODE:
            if type(v) is str and code_match(v) is not None:
                continue
        elif c is ID:
            if type(v) is str and len(v) <= ID_MAX and id_match(v) is not None:
                continue
        elif c is None:
            if k == "resourceType" and v == m.rtype:
                continue
            r = _odd_key(m, d, k)
            if r:
                continue
            return r
        elif c(v):
            continue
        else:
            return False
        if not m.checks[k](v):  # type: ignore[index] - set with m.fast
            return False
    return _after(m, d) if m.post else True


def _odd_key(m: Model, d: dict, k: str) -> bool | None:
    """A key that is not a field alias: resourceType/resource_type (compared with the
    class's resource type by FHIRAbstractModel.__init__), a python field name (pydantic
    `populate_by_name`: not mirrored, unsure) or an extra key (rejected)."""
    if k == "resourceType" and not m.rt_is_field:
        rt = d[k]
    elif k == "resource_type":
        if "resourceType" in d and not m.rt_is_field:
            return True  # popped and ignored: resourceType wins
        rt = d[k]
    elif k in m.by_name:
        return None
    else:
        return False  # extra="forbid"
    return rt is None or rt == m.rtype


def _after(m: Model, d: dict) -> bool | None:
    """The model-level rules that look at several keys at once."""
    for key in m.required_keys:
        if key not in d:
            return False
    for key, ext_key, ext_is_list in m.required_primitives:
        if d.get(key) is not None:
            continue
        ext = d.get(ext_key) if ext_key else None
        if ext is None or ext_is_list:  # a list has no .extension: fhir_core raises
            return False
        if type(ext) is not dict:
            return None
        if not ext.get("extension"):
            return False
    if m.choices:  # count over the (few) keys present, not the (many) choice names
        found = [0] * len(m.choices)
        choice_of = m.choice_of
        for k, v in d.items():
            i = choice_of.get(k)
            if i is not None and v is not None:
                found[i] += 1
        for (_, required), n in zip(m.choices, found, strict=True):
            if n > 1 or (required and not n):
                return False
    if (
        m.primitive_extension
        and d.get("id") is None
        and d.get("extension") is None
        and d.get("fhir_comments") is None
    ):
        return False
    return True


def _resource(target: tuple[str, Model], v: dict) -> bool | None:
    prefix, declared = target
    if "resourceType" in v:
        m = resource_model(prefix, v["resourceType"])
        if m is None:
            return False
        return check_model(m, v)
    return check_model(declared, v)


def _checker(f: Field) -> Checker:
    """The closure judging one field value (None included): definite True/False."""
    kind, target, ann, nullable, null_item = f
    if kind == PRIM:
        return field_check(target, ann, nullable)
    if kind == MODEL or kind == RES:

        def one(v: Any) -> bool:
            if type(v) is dict:
                r = check_model(target, v) if kind == MODEL else _resource(target, v)
                if r is not None:
                    return r
            elif v is None and nullable:
                return True
            return exact(ann, v)

        return one
    if kind == PRIM_LIST:
        item_ok = fast_check(target)

        def primitives(v: Any) -> bool:
            if type(v) is list:
                for x in v:
                    if x is None:
                        if null_item == 1:
                            continue
                        break
                    if not item_ok(x):
                        break
                else:
                    return True
            elif v is None and nullable:
                return True
            return exact(ann, v)

        return primitives
    if kind == MODEL_LIST or kind == RES_LIST:
        model = kind == MODEL_LIST

        def many(v: Any) -> bool:
            if type(v) is not list:
                return (v is None and nullable) or exact(ann, v)
            if null_item == 0 and None in v:
                return False  # reject_null_complex_elements, whatever the other items
            for x in v:
                if x is None:
                    if null_item == 1:
                        continue
                    return exact(ann, v)
                if type(x) is not dict:
                    return exact(ann, v)
                r = check_model(target, x) if model else _resource(target, x)
                if r is None:
                    return exact(ann, v)
                if not r:
                    return False
            return True

        return many
    if kind == COMMENTS:

        def comments(v: Any) -> bool:
            if v is None or type(v) is str:
                return True
            if type(v) is list and all(type(x) is str for x in v):
                return True
            return exact(ann, v)

        return comments
    return lambda v: (v is None and nullable) or exact(ann, v)  # EXACT: not mirrored
