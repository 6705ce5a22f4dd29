"""One run of the matrix: a cell at one seed, driven through keel's own `Trainer`.

The loop is `keel_worker.training.run.train` minus checkpointing, plus the harness's evaluation:
held-out accuracy is the mean exact-answer reward of `eval_samples` responses per held-out prompt
sampled at temperature 1 from the rollout engine (the paper's avg@32 on its inference engine,
docs/concepts/algorithm.md §4), and greedy accuracy beside it. Everything else (rollout at reduced
precision, π_old recompute, Routing Replay, the objective, AdamW, weight sync) is the library's
step.

Output: `runs/<cell slug>/seed<k>.csv` with one row per global step (plus a last row holding the
final evaluation) and `seed<k>.json` with the run's description; the JSON is written last, so a
run without it is incomplete and is redone.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from keel.types import metric_names as metric
from keel.types.training import TaskItem
from keel_worker.engines.chat import encode_prompt
from keel_worker.engines.models import is_moe_model
from keel_worker.training.run import build_engine, step_seed
from keel_worker.training.scoring import task_scorer
from keel_worker.training.step import Trainer
from keel_worker.training.tasks import PromptStream, Task, exact_match_reward
from research.stability.coldstart import cpu_kind, load_policy, weights_sha256
from research.stability.matrix import Budget, Cell, training_config

# CSV column -> trainer metric names to try, first present wins (None = not logged by this cell).
COLUMNS: dict[str, tuple[str, ...]] = {
    "train_reward": (metric.REWARD_MEAN,),
    "entropy": (metric.TRAIN_ENTROPY,),
    "kl_k1": (metric.MISMATCH_KL_K1, "mismatch/kl"),
    "kl_k3": (metric.MISMATCH_KL_K3,),
    "prob_diff_mean": (metric.MISMATCH_PROB_DIFF_MEAN, "mismatch/abs_prob_diff_mean"),
    "prob_diff_max": (metric.MISMATCH_PROB_DIFF_MAX, "mismatch/abs_prob_diff_max"),
    "clip_frac": (metric.CLIP_FRAC,),
    "is_trunc_frac": (metric.IS_TRUNCATED_FRAC,),
    "routing_infer_vs_train": (metric.ROUTING_INFER_VS_TRAIN_ANY,),
    "routing_old_vs_current": (metric.ROUTING_OLD_VS_CURRENT_ANY,),
    "grad_norm": (metric.OPTIM_GRAD_NORM,),
    "loss": (metric.OPTIM_LOSS,),
    "response_len": (metric.RESPONSE_LENGTH_MEAN,),
    "zero_var_frac": (metric.ADVANTAGE_ZERO_VARIANCE_FRAC,),
    "step_s": (metric.TIME_STEP,),
    "replay_mode": (metric.ROUTING_REPLAY_MODE,),  # 0 none, 2 R2, 3 R3: the mode the step ran with
}
EVAL_COLUMNS = ("eval_acc", "eval_greedy_acc")
CSV_HEADER = ("grad_step", "global_step", *COLUMNS, *EVAL_COLUMNS)


def run_paths(out_dir: Path, cell: Cell, seed: int) -> tuple[Path, Path]:
    base = out_dir / "runs" / cell.slug
    return base / f"seed{seed}.csv", base / f"seed{seed}.json"


def is_done(out_dir: Path, cell: Cell, seed: int) -> bool:
    return run_paths(out_dir, cell, seed)[1].is_file()


def _task(suite) -> Task:
    items = lambda problems: tuple(  # noqa: E731
        TaskItem(prompt=p.prompt, answer=p.answer) for p in problems
    )
    return Task(
        name=suite.task.__name__.rsplit(".", 1)[-1],
        train_items=items(suite.task.rl_pool()),
        eval_items=items(suite.task.held_out()),
        verifier=exact_match_reward,
    )


def _accuracy(
    engine, tokenizer, items, *, n: int, temperature: float, max_new_tokens: int, seed: int
) -> float:
    prompts = [encode_prompt(tokenizer, item.prompt) for item in items]
    batch = engine.generate(
        prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0, seed=seed
    )
    texts = tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
    rewards = [
        exact_match_reward(text, items[i].answer)
        for text, i in zip(texts, batch.prompt_index, strict=True)
    ]
    return sum(rewards) / len(rewards)


def evaluate(engine, tokenizer, items, budget: Budget, *, seed: int) -> dict[str, float]:
    """Held-out accuracy: sampled at temperature 1 (the main metric) and greedy."""
    common = {"max_new_tokens": budget.max_new_tokens, "seed": seed}
    return {
        "eval_acc": _accuracy(
            engine, tokenizer, items, n=budget.eval_samples, temperature=1.0, **common
        ),
        "eval_greedy_acc": _accuracy(engine, tokenizer, items, n=1, temperature=0.0, **common),
    }


def _row(metrics: dict[str, float]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column, names in COLUMNS.items():
        row[column] = next((metrics[n] for n in names if n in metrics), "")
    # Per-layer routing disagreement, e.g. routing/old_vs_current_L3 -> routing_old_vs_current_L3
    for name, value in metrics.items():
        if name.startswith("routing/") and name.rsplit("_", 1)[-1][:1] == "L":
            row[name.replace("/", "_")] = value
    return row


def run_one(
    suite,
    cell: Cell,
    seed: int,
    budget: Budget,
    *,
    model_dir: Path,
    out_dir: Path,
    work_dir: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Train `cell` at `seed` from the cold start in `model_dir`; write its CSV and JSON.

    `progress` gets a line at each evaluation that ends a quarter of the run: the files appear
    only when the run ends, which for a 512-step run is over half an hour on 2 cores."""
    torch.manual_seed(seed)
    config = training_config(cell, budget, seed=seed, model_dir=str(model_dir))
    model, tokenizer = load_policy(str(model_dir), cache_dir=work_dir)
    engine = build_engine(config, model, tokenizer, workdir=work_dir)
    trainer = Trainer(config, model, tokenizer, engine, is_moe=is_moe_model(model))
    rl_task = _task(suite)
    stream = PromptStream(rl_task.train_items, seed=seed)
    score = task_scorer(rl_task)
    held_out = rl_task.eval_items[: budget.eval_prompts]
    n = cell.num_minibatches
    rows: list[dict[str, Any]] = []
    error = None
    started = time.perf_counter()
    for step in range(config.steps):
        grad_step = step * n
        row: dict[str, Any] = {"grad_step": grad_step, "global_step": step}
        try:
            if grad_step % budget.eval_every == 0:
                row |= evaluate(engine, tokenizer, held_out, budget, seed=10_000 + grad_step)
                if grad_step and grad_step % max(budget.grad_steps // 4, 1) == 0:
                    progress(
                        f"{cell.name} seed {seed}: grad step {grad_step}/{budget.grad_steps}, "
                        f"held-out {row['eval_acc']:.3f}"
                    )
            items = stream.take(config.prompts_per_step)
            row |= _row(trainer.step(items, score, seed=step_seed(seed, step)))
        except RuntimeError as exc:  # e.g. sampling from NaN logits after a blow-up
            error = f"{type(exc).__name__}: {exc}"[:500]
            rows.append(row | {"loss": math.nan})
            break
        rows.append(row)
    if error is None:
        final = evaluate(engine, tokenizer, held_out, budget, seed=10_000 + budget.grad_steps)
        rows.append({"grad_step": budget.grad_steps, "global_step": config.steps} | final)
    meta = {
        "cell": cell.name,
        "regime": cell.regime,
        "seed": seed,
        "algorithm": config.algorithm.model_dump(mode="json"),
        "replay": config.routing_replay,
        "routing_replay": trainer.auto.summary(),  # `auto`'s last decision and its reason
        "num_minibatches": n,
        "suite": suite.name,
        "init": cell.init,
        "precision": cell.precision,
        "top_p": cell.top_p,
        "top_k": cell.top_k,
        "lr": config.optimizer.lr,
        "init_sha256": weights_sha256(model_dir),  # which cold start, whatever its path
        "cpu": cpu_kind(),  # same weights and seed on another kind of CPU: another trajectory
        "budget": budget.as_dict(),
        "wall_s": time.perf_counter() - started,
        "error": error,
    }
    _write(out_dir, cell, seed, rows, meta)
    return meta


def _write(out_dir: Path, cell: Cell, seed: int, rows: list[dict], meta: dict) -> None:
    csv_path, json_path = run_paths(out_dir, cell, seed)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    layers = sorted({k for row in rows for k in row if k not in CSV_HEADER})
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*CSV_HEADER, *layers], restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
    json_path.write_text(json.dumps(meta, indent=2))


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
