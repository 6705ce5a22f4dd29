"""`reference/config.md`: every field of a job's config and of its create body, from the wire
models (`keel.types.training`, `keel.types.algorithm`, `keel.types.jobs`).

Each model gets one section with a fixed anchor (its class name in lower case); a field's name
is its full path from the config (`guard.kl.ratio`) or from the create body (`reward.url`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from docsgen.fields import (
    bounds,
    default_label,
    description,
    holds_list_of_models,
    models_in,
    type_label,
)
from docsgen.markdown import code, generated_note, heading, one_line, page, table
from keel.types.algorithm import ALGORITHM_MODELS, ISCorrection
from keel.types.jobs import JobCreate
from keel.types.training import TrainingConfig

COLUMNS = ("name", "type", "default", "bounds", "description")
# The fields that pick a member of a discriminated union.
_TAGS = ("name", "mode", "type")


@dataclass(frozen=True)
class Section:
    """One model's table: where the model sits (`guard.kl`; "" for a root)."""

    model: type[BaseModel]
    path: str


def anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def link(model: type[BaseModel]) -> str:
    return f"[{model.__name__}](#{anchor(model)})"


def field_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def is_correction_models() -> list[type[BaseModel]]:
    union, _ = get_args(ISCorrection)
    return list(get_args(union))


def walk(root: type[BaseModel], path: str, skip: set[type[BaseModel]]) -> list[Section]:
    """`root` and every model below it, depth first, each once; models in `skip` are linked
    to where they are documented, not expanded again."""
    found: dict[type[BaseModel], Section] = {}

    def visit(model: type[BaseModel], where: str) -> None:
        if model in found or model in skip:
            return
        found[model] = Section(model, where)
        for name, field in model.model_fields.items():
            below = field_path(where, name) + (
                "[]" if holds_list_of_models(field.annotation) else ""
            )
            for nested in models_in(field.annotation):
                visit(nested, below)

    visit(root, path)
    return list(found.values())


def tag(model: type[BaseModel]) -> tuple[str, Any] | None:
    """The discriminator a union member is chosen by, e.g. ("name", "minirl")."""
    for name in _TAGS:
        field = model.model_fields.get(name)
        if field is not None and get_origin(field.annotation) is Literal:
            values = get_args(field.annotation)
            if len(values) == 1:
                return name, values[0]
    return None


def section_title(section: Section) -> str:
    model = section.model.__name__
    if not section.path:
        return model
    chosen = tag(section.model)
    if chosen is None:
        return f"{code(section.path)} ({model})"
    return f"{code(section.path)}: {code(f'{chosen[0]}={chosen[1]}')} ({model})"


def summary(annotation: Any) -> str:
    """What a field holding one model is: that model's docstring (for fields with none)."""
    nested = models_in(annotation)
    return one_line(nested[0].__doc__) if len(nested) == 1 else ""


def rows(section: Section) -> list[tuple[str, ...]]:
    model = section.model
    chosen = tag(model)
    names = sorted(model.model_fields, key=lambda name: chosen is None or name != chosen[0])
    return [
        (
            code(field_path(section.path, name)),
            type_label(field.annotation, link),
            default_label(field, link),
            bounds(field),
            description(model, name) or summary(field.annotation),
        )
        for name in names
        for field in (model.model_fields[name],)
    ]


def render_section(section: Section, level: int) -> str:
    parts = [heading(level, section_title(section), anchor(section.model))]
    doc = one_line(section.model.__doc__)
    if doc:
        parts.append(doc)
    parts.append(table(COLUMNS, rows(section)))
    return "\n\n".join(parts)


def parts() -> list[tuple[str, str, str, list[Section]]]:
    """The page's three parts: (title, anchor, introduction, sections)."""
    algorithm_models = list(ALGORITHM_MODELS.values())
    corrections = is_correction_models()
    training = walk(TrainingConfig, "", set(algorithm_models) | set(corrections))
    done = {s.model for s in training}
    algorithms = [
        s for m in algorithm_models for s in walk(m, "algorithm", done | set(corrections))
    ]
    done |= {s.model for s in algorithms}
    modes = [s for m in corrections for s in walk(m, "algorithm.is_correction", done)]
    done |= {s.model for s in modes}
    job = walk(JobCreate, "", done)
    return [
        (
            "Training config",
            "training",
            "A job's `config`, and the argument of the in-process `train()`: field paths start "
            "at the config.",
            training,
        ),
        (
            "Algorithms",
            "algorithms",
            "`algorithm.name` picks the objective; each has its own fields and defaults.",
            algorithms,
        ),
        (
            "Importance-sampling corrections",
            "is-corrections",
            "`algorithm.is_correction.mode` picks how the token IS weight is corrected "
            "(null: no correction). ρ_t is the ratio the objective corrects, π_θ/μ_old for "
            "`minirl` (π_old/μ_old with `is_scope: train_infer`) and π_old/μ_old for the others; "
            "ρ(y) = Π_t ρ_t is its response's product.",
            modes,
        ),
        (
            "Job create body",
            "job-create",
            "The body of `POST /v1/jobs`: the config above, where the prompts come from and "
            "how rollouts are rewarded.",
            job,
        ),
    ]


def documented_models() -> dict[str, str]:
    """Where on this page each model's fields are, by model name (other pages link there)."""
    return {
        s.model.__name__: f"config.md#{anchor(s.model)}"
        for *_, sections in parts()
        for s in sections
    }


def config_page() -> str:
    blocks = [
        "# Job config",
        generated_note(
            "the wire models in `keel.types` (`training`, `algorithm`, `guard`, `jobs`)"
        ),
        "Bounds are inclusive (≥, ≤) or strict (>, <) as the model states them; a field whose "
        "bounds list choices takes exactly those values. Numbers are JSON numbers (no strings "
        "or booleans), floats are finite, and no text may hold a NUL character. An unknown field "
        "is rejected with a 422 that names it.",
    ]
    for title, part_anchor, intro, sections in parts():
        blocks += [heading(2, title, part_anchor), intro]
        blocks += [render_section(section, 3) for section in sections]
    return page(blocks)
