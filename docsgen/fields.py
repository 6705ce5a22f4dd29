"""What a reference table says about one pydantic field, read from the model itself: its type,
default, bounds (ge/gt/le/lt, lengths, Literal choices) and description (the Field's, or the
attribute docstring under it)."""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import json
import textwrap
import types
from collections.abc import Callable
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from docsgen.markdown import code, one_line

# How a model is named in a table: a link to its own section.
Link = Callable[[type[BaseModel]], str]

_UNIONS = (Union, types.UnionType)
_SCALARS = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}
_COMPARISONS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
_LENGTHS = (("min_length", "≥"), ("max_length", "≤"))


def is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def members(annotation: Any) -> list[Any]:
    """The alternatives of a type: unions flattened, `Annotated` kept on each member."""
    origin = get_origin(annotation)
    if origin is Annotated and get_origin(get_args(annotation)[0]) in _UNIONS:
        return members(get_args(annotation)[0])
    if origin in _UNIONS:
        return [m for arg in get_args(annotation) for m in members(arg)]
    return [annotation]


def _bare(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's type names, at any depth (list items, union members), in order."""
    annotation = _bare(annotation)
    if is_model(annotation):
        return [annotation]
    if get_origin(annotation) is Literal:
        return []
    found = [m for arg in get_args(annotation) for m in models_in(arg)]
    return list(dict.fromkeys(found))


def holds_list_of_models(annotation: Any) -> bool:
    return any(get_origin(_bare(m)) is list and models_in(m) for m in members(annotation))


def type_label(annotation: Any, link: Link) -> str:
    annotation = _bare(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in _UNIONS:
        return " | ".join(dict.fromkeys(type_label(arg, link) for arg in args))
    if origin is Literal:
        if len(args) == 1:
            return json.dumps(args[0])
        return " | ".join(dict.fromkeys(_SCALARS.get(type(v), "str") for v in args))
    if is_model(annotation):
        return link(annotation)
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "path"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"tuple[{type_label(args[0], link)}, ...]"
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_label(arg, link) for arg in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _constraints(metadata: list[Any]) -> list[str]:
    """`≥ 0, ≤ 1` for numbers, `length ≥ 1, ≤ 40` for texts and lists."""
    values: list[str] = []
    lengths: list[str] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            values += _constraints(item.metadata)
            continue
        for attr, symbol in _COMPARISONS:
            if getattr(item, attr, None) is not None:
                values.append(f"{symbol} {_number(getattr(item, attr))}")
        for attr, symbol in _LENGTHS:
            if getattr(item, attr, None) is not None:
                lengths.append(f"{symbol} {getattr(item, attr)}")
    return values + (["length " + ", ".join(lengths)] if lengths else [])


def _choices(annotation: Any) -> list[Any]:
    values = [
        value
        for member in members(annotation)
        if get_origin(_bare(member)) is Literal
        for value in get_args(_bare(member))
    ]
    return values if len(values) > 1 else []


def bounds(field: FieldInfo) -> str:
    """The limits a value must meet, as the model states them: comparisons, lengths, choices."""
    found = _constraints(field.metadata)
    for member in members(field.annotation):
        if get_origin(member) is Annotated:
            found += _constraints(list(member.__metadata__))
    choices = _choices(field.annotation)
    if choices:
        found.append("one of " + ", ".join(code(str(value)) for value in choices))
    return ", ".join(dict.fromkeys(found))


def default_label(field: FieldInfo, link: Link) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        if value == type(value)():
            return f"the defaults of {link(type(value))}"
        value = value.model_dump(mode="json")
    return code(json.dumps(value, default=str, ensure_ascii=False))


@functools.cache
def attribute_docstrings(model: type[BaseModel]) -> dict[str, str]:
    """The string literal under each annotated attribute of `model` and its bases (pydantic
    copies them into the fields only where `use_attribute_docstrings` is set)."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not is_model(cls) or cls is BaseModel:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def description(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    return one_line(field.description or attribute_docstrings(model).get(name, ""))
