"""tinker-cookbook's own recipes, run unmodified as a Tinker user would, against whatever
TINKER_BASE_URL names (keel, for `examples/tinker_recipes.py`). Runs in `.venv-tinker`, never
in keel's venv: it imports the `tinker` SDK and the cookbook, and nothing of keel.

The one thing added to the recipes is the tokenizer. The cookbook loads it by the model's name
through the Hugging Face hub (`tokenizer_utils.get_tokenizer`), and keel's name for SmolLM2,
`smollm2-135m-instruct`, is no hub id; there is no hub here anyway. The cookbook's own registry
(`register_tokenizer`) maps the name to the tokenizer of the HF directory keel converted, so the
client tokenizes exactly as keel's worker does. The renderer is named explicitly: `qwen3_instruct`
writes ChatML (`<|im_start|>role ... <|im_end|>`), which is SmolLM2's chat format, without the
default system prompt SmolLM2's template adds.

    python examples/tinker_client.py math-rl --tokenizer-dir DIR --log-dir DIR [options]
    python examples/tinker_client.py sl      --tokenizer-dir DIR --log-dir DIR [options]
    python examples/tinker_client.py pilot   --tokenizer-dir DIR --out FILE    # no service

`math-rl` and `sl` leave the recipes' own `metrics.jsonl` in the log directory. `pilot` samples
the base model (the HF directory, on this machine, no service) on the math_rl arithmetic
problems and scores each answer with the recipe's own environment: the reward's step-to-step
noise under a policy that does not learn, from which the runner's margin is derived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from importlib import resources
from pathlib import Path

MODEL_NAME = "smollm2-135m-instruct"
RENDERER_NAME = "qwen3_instruct"
SL_SOURCE = "example_data/conversations.jsonl"  # shipped inside the tinker_cookbook package


def register_local_tokenizer(directory: Path) -> None:
    from tinker_cookbook.tokenizer_utils import register_tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    register_tokenizer(MODEL_NAME, lambda: tokenizer)


def run_math_rl(args: argparse.Namespace) -> None:
    """The recipe's CLI entry point (`recipes/math_rl/train.py`), with the arithmetic env."""
    from tinker_cookbook.recipes.math_rl.train import CLIConfig, cli_main

    config = CLIConfig(
        model_name=MODEL_NAME,
        renderer_name=RENDERER_NAME,
        lora_rank=args.lora_rank,
        env="arithmetic",
        seed=args.seed,
        group_size=args.group_size,
        groups_per_batch=args.groups_per_batch,
        learning_rate=args.lr,
        max_tokens=args.max_tokens,
        max_steps=args.steps,
        eval_every=0,
        save_every=0,
        log_path=str(args.log_dir),
        behavior_if_log_dir_exists="delete",
    )
    asyncio.run(cli_main(config))


def sl_dataset(log_dir: Path, conversations: int) -> Path:
    """The first `conversations` lines of the cookbook's shipped example conversations: a small
    fixed data set (no download), seen again every epoch, so its loss must fall."""
    source = resources.files("tinker_cookbook").joinpath(SL_SOURCE).read_text().splitlines()
    target = log_dir / "conversations.jsonl"
    log_dir.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(source[:conversations]) + "\n")
    return target


def run_sl(args: argparse.Namespace) -> None:
    """The cookbook's supervised trainer (`supervised/train.py`, cross_entropy) on that data."""
    from tinker_cookbook.renderers import TrainOnWhat
    from tinker_cookbook.supervised import train
    from tinker_cookbook.supervised.data import FromConversationFileBuilder
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    common = ChatDatasetBuilderCommonConfig(
        model_name_for_tokenizer=MODEL_NAME,
        renderer_name=RENDERER_NAME,
        max_length=args.max_length,
        batch_size=args.batch_size,
        train_on_what=TrainOnWhat.ALL_ASSISTANT_MESSAGES,
    )
    dataset = FromConversationFileBuilder(
        common_config=common, file_path=str(sl_dataset(args.log_dir, args.conversations))
    )
    config = train.Config(
        log_path=str(args.log_dir),
        model_name=MODEL_NAME,
        recipe_name="keel_tinker_sl",
        renderer_name=RENDERER_NAME,
        dataset_builder=dataset,
        learning_rate=args.lr,
        lr_schedule="constant",
        num_epochs=args.epochs,
        lora_rank=args.lora_rank,
        save_every=0,
        eval_every=0,
        infrequent_eval_every=0,
    )
    asyncio.run(train.main(config))


def run_pilot(args: argparse.Namespace) -> None:
    """Mean reward per step of the frozen base model on the recipe's own problems and scoring."""
    import torch
    from tinker_cookbook import renderers
    from tinker_cookbook.recipes.math_rl.arithmetic_env import ArithmeticDataset
    from tinker_cookbook.tokenizer_utils import get_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(args.seed)
    tokenizer = get_tokenizer(MODEL_NAME)
    # keel's converted config.json says `"quantization_config": null`, which this older
    # transformers takes for a quantized model: the attribute goes before loading.
    config = AutoConfig.from_pretrained(str(args.tokenizer_dir))
    del config.quantization_config
    model = AutoModelForCausalLM.from_pretrained(
        str(args.tokenizer_dir), config=config, dtype=torch.float32
    )
    renderer = renderers.get_renderer(RENDERER_NAME, tokenizer=tokenizer)
    dataset = ArithmeticDataset(
        batch_size=args.groups_per_batch, renderer=renderer, group_size=args.group_size
    )
    started, by_step = time.monotonic(), []
    for step in range(args.steps):
        rewards = asyncio.run(_pilot_step(dataset.get_batch(step), model, tokenizer, args))
        by_step.append(statistics.fmean(rewards))
        print(f"pilot step {step}: mean reward {by_step[-1]:.3f}", flush=True)
    summary = {
        "what": "mean reward per step of the frozen base model (no training), math_rl arithmetic",
        "model": MODEL_NAME,
        "renderer": RENDERER_NAME,
        "groups_per_batch": args.groups_per_batch,
        "group_size": args.group_size,
        "max_tokens": args.max_tokens,
        "temperature": 1.0,
        "seed": args.seed,
        "reward_by_step": [round(r, 4) for r in by_step],
        "mean": statistics.fmean(by_step),
        "stdev_of_step_means": statistics.stdev(by_step),
        "wall_s": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


async def _pilot_step(builders, model, tokenizer, args) -> list[float]:
    import torch

    envs = [env for builder in builders for env in await builder.make_envs()]
    prompts = [(await env.initial_observation())[0].to_ints() for env in envs]
    width = max(len(p) for p in prompts)
    pad = tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.max_tokens,
            eos_token_id=pad,
            pad_token_id=pad,
        )
    rewards = []
    for env, row in zip(envs, out[:, width:].tolist(), strict=True):
        action = row[: row.index(pad) + 1] if pad in row else row
        rewards.append((await env.step(action)).reward)
    return rewards


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("math-rl", "sl", "pilot"):
        s = sub.add_parser(name)
        s.add_argument("--tokenizer-dir", type=Path, required=True, help="keel's HF directory")
        s.add_argument("--seed", type=int, default=0)
        if name != "pilot":
            s.add_argument("--log-dir", type=Path, required=True, help="the recipe's log_path")
            s.add_argument("--lora-rank", type=int, default=16)
        if name != "sl":
            s.add_argument("--steps", type=int, default=8)
            s.add_argument("--groups-per-batch", type=int, default=8)
            s.add_argument("--group-size", type=int, default=4)
            s.add_argument("--max-tokens", type=int, default=5)
        if name == "math-rl":
            s.add_argument("--lr", type=float, default=1e-4)
        if name == "sl":
            s.add_argument("--lr", type=float, default=1e-4)
            s.add_argument("--conversations", type=int, default=8)
            s.add_argument("--batch-size", type=int, default=4)
            s.add_argument("--epochs", type=int, default=4)
            s.add_argument("--max-length", type=int, default=128)
        if name == "pilot":
            s.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    register_local_tokenizer(args.tokenizer_dir)
    {"math-rl": run_math_rl, "sl": run_sl, "pilot": run_pilot}[args.command](args)


if __name__ == "__main__":
    main()
