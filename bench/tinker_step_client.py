"""The Tinker side of `bench.tinker_step`: runs in `.venv-tinker` (the `tinker` SDK, nothing of
keel), against the keel that TINKER_BASE_URL and TINKER_API_KEY name.

Reads the batch `bench.tinker_step` wrote, makes one LoRA training client and times, per step,
forward_backward(loss) + optim_step from the first request to both results in hand: what a
Tinker user's training loop waits for. Prints one JSON object: the seconds of each timed step.

    .venv-tinker/bin/python bench/tinker_step_client.py BATCH.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import tinker


def load_batch(path: Path) -> tuple[dict, list[tinker.Datum]]:
    spec = json.loads(path.read_text())
    data = [
        tinker.Datum(
            model_input=tinker.ModelInput.from_ints(row["tokens"]),
            loss_fn_inputs={
                name: np.asarray(values, dtype=np.int64 if name == "target_tokens" else np.float32)
                for name, values in row["inputs"].items()
            },
        )
        for row in spec["data"]
    ]
    return spec, data


def main(argv: list[str]) -> None:
    spec, data = load_batch(Path(argv[0]))
    service = tinker.ServiceClient()
    training = service.create_lora_training_client(
        spec["model"], rank=spec["lora_rank"], seed=spec["seed"]
    )
    adam = tinker.AdamParams(**spec["adam"])
    seconds = []
    for step in range(spec["warmup"] + spec["steps"]):
        started = time.perf_counter()
        backward = training.forward_backward(data, spec["loss_fn"], spec["loss_fn_config"])
        update = training.optim_step(adam)  # sent before the first result is read, as loops do
        backward.result()
        update.result()
        if step >= spec["warmup"]:
            seconds.append(time.perf_counter() - started)
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main(sys.argv[1:])
