"""A small agent harness on the unmodified `openai` SDK, shared by the agent job tests: 2-turn
episodes with a calculator tool (a tool result answers each call the model made, a user turn
follows a reply without one), one reward per episode."""

from __future__ import annotations

import asyncio

from job_configs import tiny_job_config

import keel
import keel.agents

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]
TASKS = [{"question": f"What is {a} + {b}?", "answer": a + b} for a, b in ((2, 3), (4, 4), (7, 1))]
STEPS = 2


def agent_job(client: keel.Client, **overrides):
    """A 2-step agent job on the tiny dense model (2 tasks × 2 episodes per step)."""
    base = {
        "model": {"name": "tiny-dense"},
        "steps": STEPS,
        "prompts_per_step": 2,
        "group_size": 2,
        "rollout": {"max_new_tokens": 6},
    }
    config = tiny_job_config(**{**base, **overrides})
    return client.jobs.create(
        config=config, prompts={"type": "agent", "tasks": TASKS}, reward={"type": "external"}
    )


def conversation(task: dict) -> list[dict]:
    return [
        {"role": "system", "content": "Use the calculator."},
        {"role": "user", "content": task["question"]},
    ]


def follow_up(messages: list[dict], reply) -> list[dict]:
    """What a harness sends next: the reply as the SDK parsed it, then a tool result for each
    call it made, or a user turn."""
    assistant = reply.choices[0].message.model_dump(exclude_none=True)
    messages = [*messages, assistant]
    for call in assistant.get("tool_calls", []):
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": "5"})
    if not assistant.get("tool_calls"):
        messages.append({"role": "user", "content": "And the answer is?"})
    return messages


def score(reply, task: dict) -> float:
    return float(str(task["answer"]) in (reply.choices[0].message.content or ""))


def run_sync_harness(client: keel.Client, job_id: str) -> dict[str, list]:
    """Every episode of the job: 2 turns, then its reward; returns the `keel` sample objects
    each episode's answers carried."""
    seen: dict[str, list] = {}
    for episode in keel.agents.episodes(client, job_id, batch=4, wait_s=2.0):
        llm = episode.openai(max_retries=0)
        messages = conversation(episode.task)
        first = llm.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        messages = follow_up(messages, first)
        second = llm.chat.completions.create(
            model="policy", messages=messages, tools=TOOLS, logprobs=True
        )
        assert second.choices[0].logprobs is not None
        seen[episode.id] = [first.model_extra["keel"], second.model_extra["keel"]]
        episode.reward(score(second, episode.task))
    return seen


async def run_async_harness(client: keel.AsyncClient, job_id: str) -> dict[str, list]:
    """The same with `openai.AsyncOpenAI`, a step's episodes run concurrently."""
    seen: dict[str, list] = {}

    async def run(episode) -> None:
        llm = episode.async_openai(max_retries=0)
        messages = conversation(episode.task)
        first = await llm.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        messages = follow_up(messages, first)
        second = await llm.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        seen[episode.id] = [first.model_extra["keel"], second.model_extra["keel"]]
        await episode.areward(score(second, episode.task))

    while True:
        try:
            claimed = await client.episodes.claim(job_id, max_episodes=8, wait_s=2.0)
        except keel.ConflictError:
            return seen
        episodes = [keel.agents.AgentEpisode(e, client) for e in claimed.data]
        await asyncio.gather(*(run(e) for e in episodes))
