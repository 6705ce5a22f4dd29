"""Which models a job may name (hardening issue items 1 and 2): local paths only under the
operator's roots (symlinks and `..` followed), never keel's own state, and one answer for every
refused path, whether it is outside the roots, missing or broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel_server.platform.model_access import ModelNotAllowed, resolve_model
from keel_server.platform.settings import Settings


def _model_dir(path: Path, config: dict | str | None = None) -> Path:
    path.mkdir(parents=True)
    text = config if isinstance(config, str) else json.dumps(config or {"model_type": "llama"})
    (path / "config.json").write_text(text)
    return path


@pytest.fixture
def roots(tmp_path) -> tuple[Settings, Path]:
    allowed = tmp_path / "models"
    settings = Settings(home=tmp_path / "home", model_roots=(allowed,))
    return settings, allowed


def _refusal(name: str, settings: Settings) -> str:
    with pytest.raises(ModelNotAllowed) as info:
        resolve_model(name, settings)
    return str(info.value).replace(repr(name), "<name>")


def test_builtins_and_hub_ids_need_no_roots(tmp_path) -> None:
    settings = Settings(home=tmp_path / "home")
    assert resolve_model("tiny-moe", settings).is_moe is True
    assert resolve_model("tiny-dense", settings).kind == "builtin"
    hub = resolve_model("Qwen/Qwen3-0.6B", settings)
    assert (hub.kind, hub.spec, hub.is_moe) == ("hub", "Qwen/Qwen3-0.6B", None)


def test_a_model_under_a_root_resolves_with_its_moe_flag(roots) -> None:
    settings, allowed = roots
    dense = _model_dir(allowed / "dense")
    moe = _model_dir(allowed / "moe", {"num_experts": 8})
    gguf = allowed / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(dense), settings) == resolve_model(str(dense), settings)
    assert resolve_model(str(dense), settings).is_moe is False
    assert resolve_model(str(moe), settings).is_moe is True
    assert resolve_model(str(gguf), settings).kind == "local"
    # `..` inside the root is resolved, and the resolved path is what the worker loads
    dotted = resolve_model(f"{allowed}/moe/../dense", settings)
    assert dotted.spec == str(dense.resolve())


def test_every_refused_path_gets_the_same_answer(roots, tmp_path) -> None:
    settings, allowed = roots
    outside = _model_dir(tmp_path / "elsewhere" / "model")
    (allowed).mkdir(parents=True, exist_ok=True)
    (allowed / "escape").symlink_to(outside)
    _model_dir(allowed / "broken", "{not json")
    _model_dir(allowed / "listy", "[1, 2]")
    (allowed / "no_config").mkdir()
    refused = [
        str(outside),  # exists, but outside every root
        f"{allowed}/../elsewhere/model",  # `..` out of the root
        str(allowed / "escape"),  # a symlink out of the root
        str(allowed / "missing"),  # inside, but not there
        str(allowed / "no_config"),  # a folder that is no model
        str(allowed / "broken"),  # an invalid config.json: a 422, never a 500
        str(allowed / "listy"),
        "models/a/b",  # relative paths mean different things to the API and the worker
        "./models/dense",
        "/" + "x" * 5000,  # too long for the file system
        str(allowed) + "/\x00nul",
    ]
    answers = {_refusal(name, settings) for name in refused}
    assert len(answers) == 1, answers
    assert "KEEL_MODEL_ROOTS" in answers.pop()


def test_no_roots_means_no_local_paths(tmp_path) -> None:
    model = _model_dir(tmp_path / "model")
    with pytest.raises(ModelNotAllowed):
        resolve_model(str(model), Settings(home=tmp_path / "home"))


def test_keel_state_is_refused_even_under_a_root(tmp_path) -> None:
    settings = Settings(home=tmp_path / "home", model_roots=(tmp_path,))
    checkpoint = _model_dir(
        Path(settings.artifacts_dir) / "jobs" / "job_a" / "checkpoints" / "step_000001"
    )
    with pytest.raises(ModelNotAllowed):
        resolve_model(str(checkpoint), settings)


def test_roots_come_from_the_environment_separated_like_path(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("KEEL_MODEL_ROOTS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert Settings().model_roots == (tmp_path / "a", tmp_path / "b")
