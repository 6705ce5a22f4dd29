"""`reference/settings.md`: every field of the server's `Settings` as the environment variable
that sets it (the env prefix comes from the model's own config)."""

from __future__ import annotations

from pydantic import BaseModel

from docsgen.fields import bounds, default_label, description, type_label
from docsgen.markdown import code, generated_note, page, table
from keel_server.platform.settings import Settings


def env_prefix(settings: type[BaseModel] = Settings) -> str:
    return settings.model_config.get("env_prefix", "")


def env_name(name: str, settings: type[BaseModel] = Settings) -> str:
    return (env_prefix(settings) + name).upper()


def _no_link(model: type[BaseModel]) -> str:
    return model.__name__


def settings_page() -> str:
    rows = [
        (
            code(env_name(name)),
            type_label(field.annotation, _no_link),
            default_label(field, _no_link),
            bounds(field),
            description(Settings, name),
        )
        for name, field in Settings.model_fields.items()
    ]
    return page(
        [
            "# Settings",
            generated_note("`keel_server.platform.settings.Settings`"),
            "The API server, the worker and the `keel` operator commands (`keel up` and the "
            "others that act on this machine) read these variables once, at start, into one "
            f"`Settings`. Every name starts with {code(env_prefix())}. The Python SDK and the "
            "`keel` user commands read only `KEEL_BASE_URL` and `KEEL_API_KEY` "
            "([Python SDK](sdk.md)); per-job hyperparameters are not settings but the job's "
            "[config](config.md).",
            table(("variable", "type", "default", "bounds", "description"), rows),
        ]
    )
