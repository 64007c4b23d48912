"""Validation tables compiled from the fhir.resources R4B pydantic model metadata.

One `Model` per model class, compiled on first use: importing all R4B model modules
costs ~2.4 s, while a message only touches a few dozen classes, so a generated module
would either pay that at import or drift from the installed fhir.resources. Compiling
from `model_fields` at run time keeps the tables equal to the models that the reference
path validates with, whatever fhir.resources version is installed.

A class whose behaviour is not fully described by the table (a validator we do not
know, a different config) is compiled as *opaque*: the walker then asks pydantic for
that subtree. So an unknown construct costs speed, never correctness.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Field kinds (small ints: the walker dispatches on them in its hot loop).
PRIM, PRIM_LIST, MODEL, MODEL_LIST, RES, RES_LIST, COMMENTS, EXACT = range(8)

# The validators FHIRAbstractModel and FHIRPrimitiveExtension declare; the walker
# mirrors exactly these, anything else makes a class opaque.
_KNOWN_MODEL_VALIDATORS = frozenset(
    {
        "reject_null_complex_elements",
        "validate_after_model_construction",
        "validate_extension_or_fhir_comment_required",
    }
)
_NONE = type(None)


class Field(typing.NamedTuple):
    """One accepted key of a model.

    `target` is the primitive annotation (PRIM*), the sub-model (MODEL*), the type
    prefix and declared model for resource dispatch (RES*); `annotation` is what
    pydantic validates the field value against when the walker is unsure.
    """

    kind: int
    target: Any
    annotation: Any
    nullable: bool  # None is accepted for the field itself
    null_item: int  # list fields: 1 None item accepted, 0 rejected, 2 ask pydantic


@dataclass(eq=False, slots=True)
class Model:
    """The compiled rules of one model class (filled by `build` on first use)."""

    path: str  # import path of the model class, as fhir.resources names it
    ready: bool = False
    opaque: bool = False
    rtype: str = ""
    rt_is_field: bool = False
    primitive_extension: bool = False
    fields: dict[str, Field] = field(default_factory=dict)
    by_name: frozenset[str] = frozenset()  # python names that differ from the alias
    required_keys: tuple[str, ...] = ()
    required_primitives: tuple[tuple[str, str, bool], ...] = ()  # (alias, _alias, ext list)
    choices: tuple[tuple[tuple[str, ...], bool], ...] = ()
    post: bool = False  # any of the model-level rules above applies
    choice_of: dict[str, int] = field(default_factory=dict)  # alias -> index in choices
    checks: dict[str, Callable[[Any], bool]] | None = None  # set by the walker
    fast: dict[str, Any] | None = None  # set by the walker: inlined forms of `checks`

    def build(self) -> Model:
        from pydantic._internal._validators import import_string

        _compile(self, import_string(self.path))
        self.ready = True
        return self


_MODELS: dict[str, Model] = {}


def model_for(path: str) -> Model:
    """The (possibly not yet built) table of the model class at `path`."""
    m = _MODELS.get(path)
    if m is None:
        m = _MODELS[path] = Model(path)
    return m


def _union_args(annotation: Any) -> tuple[list[Any], bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = list(typing.get_args(annotation))
        return [a for a in args if a is not _NONE], _NONE in args
    return [annotation], False


def _is_list(annotation: Any) -> bool:
    core, _ = _union_args(annotation)
    return len(core) == 1 and typing.get_origin(core[0]) is list


def _classify(item: Any) -> tuple[int, Any] | None:
    """(kind, target) of a single (non-list) annotation, None when not understood."""
    from fhir_core.types import FhirBase, FhirElementOrResourceBase

    if isinstance(item, type) and issubclass(item, FhirBase):
        if issubclass(item, FhirElementOrResourceBase):
            if item._model_klass.rsplit(".", 1)[-1] != "Resource":
                return None
            return RES, (item._prefix, model_for(item._model_klass))
        return MODEL, model_for(item._model_klass)
    if item is bool or typing.get_origin(item) is typing.Annotated:
        return PRIM, item
    return None


def _field(name: str, annotation: Any) -> Field:
    if name == "fhir_comments":
        return Field(COMMENTS, None, annotation, True, 0)
    core, nullable = _union_args(annotation)
    if len(core) != 1:
        return Field(EXACT, None, annotation, nullable, 0)
    if typing.get_origin(core[0]) is list:
        inner, item_nullable = _union_args(typing.get_args(core[0])[0])
        found = _classify(inner[0]) if len(inner) == 1 else None
        if found is None:
            return Field(EXACT, None, annotation, nullable, 0)
        kind, target = found
        if kind == PRIM:  # primitive lists keep nulls as placeholders for `_field`
            return Field(PRIM_LIST, target, annotation, nullable, 1 if item_nullable else 2)
        # reject_null_complex_elements: nulls only in `__ext` lists (then as typed)
        null_item = (1 if item_nullable else 2) if name.endswith("__ext") else 0
        return Field(kind + 1, target, annotation, nullable, null_item)
    found = _classify(core[0])
    if found is None:
        return Field(EXACT, None, annotation, nullable, 0)
    return Field(found[0], found[1], annotation, nullable, 0)


def _standard(cls: type) -> bool:
    """True when the class validates only through the FHIRAbstractModel machinery."""
    from fhir_core.fhirabstractmodel import FHIRAbstractModel

    deco = cls.__pydantic_decorators__  # type: ignore[attr-defined]
    config = cls.model_config  # type: ignore[attr-defined]
    return (
        cls.__init__ is FHIRAbstractModel.__init__
        and not deco.field_validators
        and not deco.validators
        and not deco.root_validators
        and set(deco.model_validators) <= _KNOWN_MODEL_VALIDATORS
        and config.get("extra") == "forbid"
        and not config.get("strict")
        and not any(f.metadata for f in cls.model_fields.values())  # type: ignore[attr-defined]
    )


def _call_hook(cls: type, name: str) -> Any:
    """get_required_fields / get_one_of_many_fields are instance methods that only
    return constants; call them without building an instance."""
    return getattr(cls, name)(None)


def _compile(m: Model, cls: Any) -> None:
    m.rtype = cls.__resource_type__
    if not _standard(cls):
        m.opaque = True
        return
    fields = cls.model_fields
    m.rt_is_field = "resourceType" in fields
    validators = cls.__pydantic_decorators__.model_validators
    m.primitive_extension = "validate_extension_or_fhir_comment_required" in validators
    alias = {name: (f.alias or name) for name, f in fields.items()}
    m.fields = {alias[name]: _field(name, f.annotation) for name, f in fields.items()}
    m.by_name = frozenset(n for n in fields if alias[n] != n)
    m.required_keys = tuple(alias[n] for n, f in fields.items() if f.is_required())
    element_to_name = cls.get_alias_mapping()
    required = []
    for element, ext in _call_hook(cls, "get_required_fields"):
        ext_list = ext is not None and _is_list(fields[ext].annotation)
        ext_alias = alias[ext] if ext is not None else ""
        required.append((alias[element_to_name[element]], ext_alias, ext_list))
    m.required_primitives = tuple(required)
    m.choices = tuple(
        (
            tuple(alias[n] for n in names),
            fields[names[0]].json_schema_extra.get("one_of_many_required") is True,
        )
        for names in _call_hook(cls, "get_one_of_many_fields").values()
    )
    m.choice_of = {name: i for i, (names, _) in enumerate(m.choices) for name in names}
    m.post = bool(m.required_keys or m.required_primitives or m.choices or m.primitive_extension)


_RESOURCES: dict[str, Model | None] = {}


def resource_model(prefix: str, resource_type: object) -> Model | None:
    """The table for `"resourceType": resource_type` in a Resource-typed field, or None
    when fhir.resources rejects it (unknown type name, not a string, not a Resource)."""
    if type(resource_type) is not str:
        return None
    key = prefix + resource_type + "Type"
    found = _RESOURCES.get(key, False)
    if found is not False:
        return found  # type: ignore[return-value]
    from fhir_core.constraints import FHIR_TYPES_MAPS
    from pydantic._internal._validators import import_string

    path = FHIR_TYPES_MAPS.get(key)
    if path is None:
        return None  # unknown names are not cached: the cache stays bounded
    model = model_for(path) if import_string(path).has_resource_base() else None
    _RESOURCES[key] = model
    return model
