"""Every field a user or an operator sets says what it means: a field with no description is a
blank cell on the reference pages, so a new one without a description fails here.

In scope: the wire models of a job (`TrainingConfig` and every model below it, every objective
and IS-correction model, `JobCreate` with its prompt and reward sources), whose descriptions
must be pydantic's own (the OpenAPI document carries those, attribute docstrings only with
`use_attribute_docstrings`), and the server's `Settings` as `reference/settings.md` reads them.
The models are walked here, not by the generator, so a model the generator skipped still counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from pydantic import BaseModel, ConfigDict, Field
from wire_walk import models_named

from docsgen.fields import description
from keel.types.algorithm import ALGORITHM_MODELS, ISCorrection
from keel.types.jobs import JobCreate
from keel.types.training import TrainingConfig
from keel_server.api.app import create_app
from keel_server.platform.settings import Settings


def models_below(*roots: type[BaseModel]) -> list[type[BaseModel]]:
    """`roots` and every model their fields name, at any depth, each once."""
    found: dict[type[BaseModel], None] = {}

    def visit(model: type[BaseModel]) -> None:
        if model not in found:
            found[model] = None
            for field in model.model_fields.values():
                for nested in models_named(field.annotation):
                    visit(nested)

    for root in roots:
        visit(root)
    return list(found)


def wire_models() -> list[type[BaseModel]]:
    union, _ = get_args(ISCorrection)
    return models_below(TrainingConfig, *ALGORITHM_MODELS.values(), *get_args(union), JobCreate)


def undocumented(model: type[BaseModel]) -> list[str]:
    """`Model.field` for each field of `model` whose own description is missing or blank."""
    return [
        f"{model.__name__}.{name}"
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]


def test_every_wire_model_field_has_a_description():
    models = wire_models()
    names = {m.__name__ for m in models}
    # The walk reaches every corner: guard triggers, IS modes, both kinds of source, list items.
    expected = {"KlTrigger", "RollbackConfig", "GeoMask", "DPPOKLConfig", "TaskItem", "PromptIn"}
    assert expected | {"WebhookReward", "ClientPrompts", "WandbConfig", "LoraConfig"} <= names
    assert sum(len(m.model_fields) for m in models) >= 200
    missing = [field for model in models for field in undocumented(model)]
    assert not missing, f"fields without a description: {missing}"


def test_every_setting_has_a_description():
    missing = [name for name in Settings.model_fields if not description(Settings, name).strip()]
    assert not missing, [f"KEEL_{name.upper()}" for name in missing]


def test_the_openapi_document_carries_every_description(tmp_path: Path):
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'k.db'}")
    app = create_app(settings)
    schemas = app.openapi()["components"]["schemas"]
    app.state.ctx.close()
    missing = []
    for model in wire_models():
        properties = schemas[model.__name__]["properties"]
        assert set(properties) == set(model.model_fields), model.__name__
        missing += [
            f"{model.__name__}.{p}" for p, s in properties.items() if not s.get("description")
        ]
    assert not missing, missing


def test_a_field_without_a_description_is_reported():
    class Inner(BaseModel):
        documented: int = Field(1, description="Says what it is.")
        blank: int = Field(2, description="  ")
        bare: int = 3

    class Docstrings(BaseModel):
        model_config = ConfigDict(use_attribute_docstrings=True)

        read: int = 4
        """An attribute docstring pydantic reads."""
        unread: int = 5

    class Outer(BaseModel):
        inner: list[Inner] | None = Field(None, description="Nested in a list.")
        docstrings: Docstrings = Field(default_factory=Docstrings)

    assert models_below(Outer) == [Outer, Inner, Docstrings]
    reported = [field for model in models_below(Outer) for field in undocumented(model)]
    assert reported == ["Outer.docstrings", "Inner.blank", "Inner.bare", "Docstrings.unread"]
