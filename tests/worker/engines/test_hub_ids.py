"""A hub id `org/name` is looked up in the Hugging Face hub (its cache) only: a folder of that
name under the worker's working directory, outside every model root, is never loaded."""

from __future__ import annotations

import huggingface_hub.constants
import pytest

from keel_worker.engines.models import ModelNotFoundError, load_model

HUB_ID = "keel-no-such-org/local-shadow"


def test_a_hub_id_never_loads_a_folder_of_that_name(tmp_path, monkeypatch) -> None:
    tiny = load_model("tiny-dense", cache_dir=tmp_path / "cache")
    shadow = tmp_path / "cwd" / HUB_ID
    tiny.model.save_pretrained(shadow)
    tiny.tokenizer.save_pretrained(shadow)
    monkeypatch.chdir(tmp_path / "cwd")
    # Online (the offline switch would refuse before any lookup): the hub has no such repo, or
    # is unreachable from here; either way the folder under the working directory stays unread.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelNotFoundError, match="Hugging Face hub"):
        load_model(HUB_ID, cache_dir=tmp_path / "cache", local_paths=False)
