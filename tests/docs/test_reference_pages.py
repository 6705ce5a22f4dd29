"""The generated reference pages are complete: every wire-model field path, every algorithm and
IS-correction field, every REST operation, every metric and every setting appears, and its row
says what the code says (type, default, bounds, description)."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Annotated, Union, get_args, get_origin

from page_tables import row, sections
from pydantic import BaseModel
from wire_walk import models_named

from docsgen.fields import description
from keel.types import metric_names
from keel.types.algorithm import ALGORITHM_MODELS, ISCorrection
from keel.types.guard import TriggerName
from keel.types.jobs import JobCreate
from keel.types.training import TrainingConfig
from keel_server.api.app import create_app
from keel_server.platform.settings import Settings


def _is_list(annotation) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType, Annotated):
        return any(_is_list(arg) for arg in get_args(annotation))
    return origin is list


def field_paths(model: type[BaseModel], prefix: str = "", stop=()) -> dict[str, tuple]:
    """Every field below `model` by its dotted path (`[]` after a list), with its model."""
    paths: dict[str, tuple] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths[path] = (model, name)
        below = path + ("[]" if _is_list(field.annotation) else "") + "."
        for nested in models_named(field.annotation):
            if nested not in stop:
                paths.update(field_paths(nested, below, stop))
    return paths


COMPARISONS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def test_every_training_config_field_path_has_a_row(generated):
    page = generated.pages["reference/config.md"]
    paths = field_paths(TrainingConfig)
    assert "guard.kl.ratio" in paths and "task.items[].prompt" in paths  # the walk goes deep
    assert "algorithm.is_correction.cap" in paths
    missing = [path for path in paths if f"| `{path}` |" not in page]
    assert not missing, missing


def test_every_field_row_says_what_the_model_says(generated):
    """Default, bounds and description of each TrainingConfig row, checked against pydantic's
    own field info (descriptions include DPPO's attribute docstrings)."""
    page = generated.pages["reference/config.md"]
    by_anchor = sections(page)
    for path, (model, name) in field_paths(TrainingConfig).items():
        field = model.model_fields[name]
        _, _, default, bounds, text = row(by_anchor[model.__name__.lower()], f"`{path}`")
        if field.description:
            assert text == " ".join(field.description.split()).replace("|", "\\|"), path
        if field.default_factory is None and isinstance(field.default, int | float | str):
            assert default == f"`{json.dumps(field.default)}`", path
        for item in field.metadata:
            for attr, symbol in COMPARISONS.items():
                limit = getattr(item, attr, None)
                if limit is not None:
                    assert f"{symbol} {_number(limit)}" in bounds, (path, bounds)


def test_known_rows(generated):
    by_anchor = sections(generated.pages["reference/config.md"])
    assert row(by_anchor["rolloutconfig"], "`rollout.temperature`")[2:4] == ["`1.0`", "> 0, ≤ 10"]
    routing = row(by_anchor["trainingconfig"], "`routing_replay`")
    assert routing[3] == "one of `none`, `R2`, `R3`, `auto`"
    name = row(by_anchor["modelconfig"], "`model.name`")
    assert name[1:4] == ["str \\| null", '`"smollm2-135m-instruct"`', "length ≥ 1, ≤ 1024"]
    delta = row(by_anchor["dppotvconfig"], "`algorithm.delta_low`")
    assert "0.15 is the authors' value" in delta[4]  # an attribute docstring


def test_attribute_docstrings_are_read_without_use_attribute_docstrings():
    class Knob(BaseModel):
        size: int = 3
        """How big."""

    assert Knob.model_fields["size"].description is None
    assert description(Knob, "size") == "How big."


def test_every_objective_and_is_correction_has_its_own_table(generated):
    by_anchor = sections(generated.pages["reference/config.md"])
    union, _ = get_args(ISCorrection)
    corrections = get_args(union)
    assert len(ALGORITHM_MODELS) == 11 and len(corrections) == 5
    for model in [*ALGORITHM_MODELS.values(), *corrections]:
        prefix = "algorithm." if model in ALGORITHM_MODELS.values() else "algorithm.is_correction."
        table = by_anchor[model.__name__.lower()]
        for name in model.model_fields:
            row(table, f"`{prefix}{name}`")
    for objective, model in ALGORITHM_MODELS.items():
        assert row(by_anchor[model.__name__.lower()], "`algorithm.name`")[2] == f'`"{objective}"`'


def test_every_job_create_field_has_a_row(generated):
    page = generated.pages["reference/config.md"]
    paths = field_paths(JobCreate, stop=(TrainingConfig,))
    assert {"reward.url", "prompts.prompts[].text", "reward.verifier"} <= set(paths)
    missing = [path for path in paths if f"| `{path}` |" not in page]
    assert not missing, missing


def test_every_rest_operation_has_a_section(generated, tmp_path: Path):
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'k.db'}")
    app = create_app(settings)
    document = app.openapi()
    app.state.ctx.close()
    page = generated.pages["reference/rest.md"]
    operations = [
        (method.upper(), path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    ]
    assert len(operations) >= 26
    headings = [line for line in page.splitlines() if line.startswith("### `")]
    assert len(headings) == len(operations)
    by_anchor = sections(page)
    for method, path, op in operations:
        heading = next(h for h in headings if h.startswith(f"### `{method} {path}`:"))
        anchor = heading.rsplit("{#", 1)[1].rstrip("}")
        text = by_anchor[anchor]
        for status in op["responses"]:
            # An error status every authenticated operation shares is listed once, at the top.
            shared = f"| `{status}` |" in by_anchor["errors"] and "(#errors)" in text
            assert f"| `{status}` |" in text or shared, (method, path, status)
        body = op.get("requestBody", {}).get("content", {})
        for media in body.values():
            assert media["schema"].get("$ref", "").rsplit("/", 1)[-1] in text, (method, path)


def test_every_metric_name_appears_with_its_description(generated):
    page = generated.pages["reference/metrics.md"]
    for name, what in metric_names.METRICS.items():
        assert row(page, f"`{name}`")[1] == what.replace("|", "\\|")
    families = [metric_names.guard_trigger(t) for t in get_args(TriggerName)]
    families += [metric_names.final(m) for m in metric_names.EVAL_METRICS]
    families += ["routing/infer_vs_train_L<i>", "routing/old_vs_current_L<i>"]
    for name in families:
        assert f"`{name}`" in page, name


def test_every_setting_appears_as_the_variable_that_sets_it(generated, monkeypatch):
    page = generated.pages["reference/settings.md"]
    assert Settings.model_config["env_prefix"] == "KEEL_"
    for name, field in Settings.model_fields.items():
        cells = row(page, f"`KEEL_{name.upper()}`")
        if field.description:
            assert cells[4] == " ".join(field.description.split())
    # The documented name is the one pydantic-settings reads.
    monkeypatch.setenv("KEEL_PAGE_SIZE_MAX", "7")
    assert Settings().page_size_max == 7
