"""An agent harness that trains SmolLM2-135M-Instruct to use a tool, on this CPU, through keel.

Each task is a person whose secret number only the `lookup` tool knows. An episode is a
conversation run here with the unmodified `openai` SDK against keel's OpenAI-compatible endpoint:
the model must call `lookup` with the right name (turn 1), read the tool's answer and say the
number (turn 2). Reward 1 when the final answer holds the right number, else 0. Three solved
examples open every conversation (few-shot): without them this 135M model never calls the tool,
and RL has nothing to reinforce.

Every task appears in exactly one step (names and numbers are drawn fresh), so each step's
success rate is measured on tasks the policy has never trained on. The criterion, declared here
before any run: the mean success of the last two steps exceeds that of the first two by at
least `TARGET_GAIN` (0.2).

    python examples/lookup_agent.py            # starts `keel up` on a free port, runs, stops
    python examples/lookup_agent.py --url http://127.0.0.1:8000 --api-key keel_sk_...

It prints one line per step and writes a summary JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from demo_service import KeelService, choose_port  # noqa: E402

import keel  # noqa: E402
import keel.agents  # noqa: E402

TARGET_GAIN = 0.2
JOB_NAME = "lookup-agent"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up a person's secret number.",
            "parameters": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
            },
        },
    }
]
NAMES = [
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "xena",
    "yara",
    "zack",
    "amber",
    "boris",
    "celia",
    "dmitri",
    "edgar",
    "fiona",
    "gustav",
    "hana",
    "igor",
    "jasmine",
    "karl",
    "lena",
    "marco",
    "nadia",
    "oscar",
    "petra",
    "quentin",
    "rosa",
    "stefan",
    "tanja",
    "ulrich",
    "vera",
]
SHOTS = (("zoe", 4817), ("max", 2290), ("ivy", 6053))  # never asked about: not in NAMES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12, help="RL steps (default 12)")
    p.add_argument("--tasks-per-step", type=int, default=4, help="B (default 4)")
    p.add_argument("--group-size", type=int, default=4, help="G episodes per task (default 4)")
    p.add_argument("--lr", type=float, default=2e-5, help="AdamW learning rate (default 2e-5)")
    p.add_argument("--parallel", type=int, default=16, help="episodes run at once (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--url", help="a running keel (default: start `keel up` here)")
    p.add_argument("--api-key", help="its API key (with --url)")
    p.add_argument("--home", type=Path, default=REPO / ".keel-agent", help="`keel up`'s home")
    p.add_argument("--out", type=Path, default=None, help="summary JSON (default: <home>/...)")
    return p.parse_args(argv)


def make_tasks(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` tasks, each a name and its secret number, in the order the job hands them out."""
    rng = random.Random(seed)
    return [{"name": rng.choice(NAMES), "number": rng.randrange(1000, 10000)} for _ in range(count)]


def job_request(args: argparse.Namespace) -> dict[str, Any]:
    config = {
        "model": {"name": "smollm2-135m-instruct"},
        "algorithm": {"name": "minirl"},
        "rollout": {"engine": "hf", "precision": "bf16", "max_new_tokens": 40},
        "train_dtype": "fp32",
        "optimizer": {"lr": args.lr},
        "prompts_per_step": args.tasks_per_step,
        "group_size": args.group_size,
        "num_minibatches": 2,
        "micro_batch_size": 8,
        "steps": args.steps,
        "seed": args.seed,
        "eval_every": 0,
        "checkpoint_every": 0,
    }
    tasks = make_tasks(args.steps * args.tasks_per_step, args.seed)
    return {
        "name": JOB_NAME,
        "config": config,
        "prompts": {"type": "agent", "tasks": tasks},
        "reward": {"type": "external"},
    }


# ------------------------------------------------------------------------------ one episode


def few_shot() -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for i, (name, number) in enumerate(SHOTS):
        call = {
            "id": f"shot_{i}",
            "type": "function",
            "function": {"name": "lookup", "arguments": json.dumps({"name": name})},
        }
        messages += [
            {"role": "user", "content": f"What is {name}'s secret number?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": str(number)},
            {"role": "assistant", "content": f"{name.capitalize()}'s secret number is {number}."},
        ]
    return messages


def lookup(arguments: str, task: dict[str, Any]) -> str:
    """The tool: the task's number for the task's person; nobody else is known."""
    try:
        name = str(json.loads(arguments).get("name", "")).strip().lower()
    except (ValueError, AttributeError):
        return "error: arguments must be a JSON object with a name"
    return str(task["number"]) if name == task["name"] else f"unknown person: {name}"


def run_episode(episode: keel.agents.AgentEpisode) -> float:
    """Turn 1: the model should call the tool; turn 2: answer with its result. Returns and posts
    the reward."""
    task, llm = episode.task, episode.openai(max_retries=2)
    question = {"role": "user", "content": f"What is {task['name']}'s secret number?"}
    messages = [*few_shot(), question]
    reply = llm.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
    message = reply.choices[0].message
    reward = 0.0
    if message.tool_calls:
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            result = lookup(call.function.arguments, task)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        answer = llm.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        reward = float(str(task["number"]) in (answer.choices[0].message.content or ""))
    episode.reward(reward)
    return reward


# ------------------------------------------------------------------------------ the run


def run(client: keel.Client, args: argparse.Namespace) -> dict[str, Any]:
    started, load_before = time.monotonic(), os.getloadavg()
    job = client.jobs.create(**job_request(args))
    print(
        f"job {job.id}: {args.steps} steps × {args.tasks_per_step} tasks × {args.group_size} "
        f"episodes, lr {args.lr:g}",
        flush=True,
    )
    success: dict[int, list[float]] = {}
    with ThreadPoolExecutor(args.parallel) as pool:
        while True:
            try:
                claimed = client.episodes.claim(job.id, max_episodes=args.parallel, wait_s=10.0)
            except keel.ConflictError:
                break  # the job ended
            episodes = [keel.agents.AgentEpisode(e, client) for e in claimed.data]
            for episode, reward in zip(episodes, pool.map(run_episode, episodes), strict=True):
                step_rewards = success.setdefault(episode.episode.step, [])
                step_rewards.append(reward)
                if len(step_rewards) == args.tasks_per_step * args.group_size:
                    print(
                        f"step {episode.episode.step:>3}: success {_mean(step_rewards):.2f} "
                        f"({time.monotonic() - started:.0f} s)",
                        flush=True,
                    )
    done = client.jobs.wait(job.id, timeout_s=600)
    summary = summarize(job.id, done.status, success, time.monotonic() - started)
    summary["machine"] = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    return summary


def summarize(job_id: str, status: str, success: dict[int, list[float]], wall_s: float) -> dict:
    steps = sorted(success)
    first = _mean([r for s in steps[:2] for r in success[s]])
    last = _mean([r for s in steps[-2:] for r in success[s]])
    summary = {
        "job_id": job_id,
        "status": status,
        "success_by_step": {s: _mean(success[s]) for s in steps},
        "first_two_steps": first,
        "last_two_steps": last,
        "gain": last - first,
        "target_gain": TARGET_GAIN,
        "met": last - first >= TARGET_GAIN,
        "wall_s": round(wall_s, 1),
    }
    print(
        f"success {first:.2f} (steps 1-2) -> {last:.2f} (last two): gain {last - first:+.2f}, "
        f"target +{TARGET_GAIN} {'met' if summary['met'] else 'NOT met'}; {wall_s / 60:.1f} min"
    )
    return summary


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or args.home / "lookup_agent.json"
    started = time.monotonic()
    if args.url:
        with keel.Client(base_url=args.url, api_key=args.api_key) as client:
            summary = run(client, args)
    else:
        service = KeelService(args.home, choose_port(8000))
        admin_key = service.start()
        try:
            with keel.Client(base_url=service.url, api_key=admin_key) as client:
                summary = run(client, args)
        finally:
            service.stop()
    summary["total_wall_s"] = round(time.monotonic() - started, 1)  # `keel up` start and stop too
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
