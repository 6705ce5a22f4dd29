"""The models a wire type names, found the way a reader of the reference would follow them."""

from __future__ import annotations

from typing import Literal, get_args, get_origin

from pydantic import BaseModel


def models_named(annotation) -> list[type[BaseModel]]:
    """Every model a type names: through Annotated, unions, lists and tuples."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) is Literal:
        return []
    return [m for arg in get_args(annotation) for m in models_named(arg)]
