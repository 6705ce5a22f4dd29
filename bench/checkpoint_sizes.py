"""Download sizes of each checkpoint kind for SmolLM2-135M-Instruct.

Writes a checkpoint the way a job does (`save_checkpoint`, fp32 weights, the AdamW state of
one real update) and sizes every kind with the worker's own registration hashing
(`keel_server.platform.storage.archive_kinds`), timing that hashing too; results in
`bench/results/checkpoint_sizes.{json,md}`. No LoRA kind: `bench/lora.py` measures LoRA.

    .venv/bin/python bench/checkpoint_sizes.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    import torch

    from keel_server.platform.storage import archive_kinds
    from keel_worker.engines.models import load_model
    from keel_worker.training.checkpoint import TrainerState, checkpoint_dir, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model("smollm2-135m-instruct", cache_dir=Path(tmp) / "models")
        model = loaded.model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        ids = torch.tensor([loaded.tokenizer("What is 7 + 8?")["input_ids"]])
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        state = TrainerState(
            step=1, policy_version=1, data_cursor=8, optimizer=optimizer.state_dict()
        )
        path = save_checkpoint(
            checkpoint_dir(Path(tmp) / "job", 1),
            model=model,
            tokenizer=loaded.tokenizer,
            state=state,
        )
        started = time.perf_counter()
        kinds = archive_kinds(path)
        hash_s = time.perf_counter() - started
    result = {
        "model": "smollm2-135m-instruct (fp32 weights, AdamW state after one update)",
        "kinds": kinds,
        "registration_hashing_s": round(hash_s, 2),
        "load_average": os.getloadavg(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "checkpoint_sizes.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Checkpoint download sizes, SmolLM2-135M-Instruct",
        "",
        "| kind | size | sha256 |",
        "|---|---|---|",
        *(
            f"| {k} | {v['size_bytes'] / 1e6:.1f} MB ({v['size_bytes']} B) "
            f"| `{v['sha256'][:16]}…` |"
            for k, v in kinds.items()
        ),
        "",
        f"Hashing every kind at registration took {hash_s:.1f} s (load average "
        f"{result['load_average'][0]:.1f}).",
        "",
    ]
    (RESULTS / "checkpoint_sizes.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
