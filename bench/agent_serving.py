"""Agent serving: concurrent episodes through the policy server against the engine's own batch.

The work (`Work`): SmolLM2-135M-Instruct, 32 episodes, each making 2 chat calls one after the
other; every call is a ~100-token prompt (one user turn through the chat template, lengths spread
over ±10 tokens so the engine left-pads) and exactly 32 new tokens (EOS ignored on both sides, as
in `bench.vllm_throughput`, so both sample the same number of tokens) at temperature 1.

- **engine**: the `hf` engine's own `generate` of the 32 first-call prompts in one batch, then of
  the 32 second-call prompts; tokens / the two calls' time. Prompts are rendered outside the clock.
- **served**: a real `PolicyServer` on 127.0.0.1 (default coalescing) and a serving loop doing the
  job loop's part (`take` at most one call per open episode → render the calls' messages with the
  chat template → `generate_batched` → decode → answer), against a harness in another process:
  32 asyncio tasks (httpx, one kept-alive connection each, opened before the clock) that start
  together and make their episode's calls in turn; tokens / the harness's wall time from the
  start until the last answer.
- **floor**: the same harness against a serving loop that answers every call at once (same answer
  size, nothing sampled): the latency HTTP and a 32-task Python client cost here on their own.

Both sides generate on the process's main thread (the serving loop runs there, as in the job loop):
under OpenMP, the same generate on another thread can run at a very different speed, and on a
shared machine the main thread's pool of 2 threads was up to 10× slower than 1 thread. Hence
`--threads` (torch threads) defaults to 1, as in `bench.service_overhead`.

Per call the harness measures its HTTP round trip; the server's added latency is the round trip
minus the time its batch spent in `generate_batched`. Both processes stamp the call on the one
monotonic clock, so the added time splits into `SEGMENTS` (`bench.agent_serving_report`, which
also holds the targets: served / engine tokens/s ≥ 0.8, added latency p50 ≤ 20 ms, and writes
the report). One unrecorded warm-up of each side, then `--repeats` rounds of engine, served,
floor. Writes `bench/results/agent_serving.json` and `.md` with the CPU and the load (`uptime`)
before and after.

    .venv/bin/python -m bench.agent_serving
    .venv/bin/python -m bench.agent_serving --repeats 5 --episodes 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.agent_serving_report import SEGMENTS, report, summarize
from bench.machine import describe_machine, load_averages, uptime

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "agent_serving"
SECRET = "bench-secret"
TEXT = (
    "The harbour town wakes before the sun. Fishing boats slip out past the lighthouse while the "
    "bakery on the corner fills the street with the smell of bread. By seven the market stalls are "
    "up: crates of lemons, baskets of mussels, a man selling second-hand maps of places that have "
    "changed their names twice since the maps were printed. Children run between the stalls on "
    "their way to school, and the old ferry sounds its horn as it leaves for the island. In the "
    "afternoon the wind turns, the tourists retreat to the cafes, and the fishermen mend their "
    "nets on the quay, arguing about the weather, the price of fuel and whose grandfather first "
    "found the deep channel beyond the rocks where the big fish feed in autumn."
)


@dataclass(frozen=True)
class Work:
    model: str = "smollm2-135m-instruct"
    episodes: int = 32
    calls: int = 2  # per episode, one after the other
    prompt_tokens: int = 100  # rendered prompt length, spread over ± prompt_spread
    prompt_spread: int = 10
    new_tokens: int = 32
    temperature: float = 1.0
    precision: str = "fp32"


# ---------------------------------------------------------------------- prompts
def render(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    """The prompt ids of each conversation and the generation prompt (the serving loop's
    rendering): the chat template per conversation, then one batched tokenizer call."""
    if getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            for messages in conversations
        ]
        # The template already holds every special token it needs (BOS included).
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    texts = ["\n".join(m["content"] for m in messages) for messages in conversations]
    return [list(ids) for ids in tokenizer(texts)["input_ids"]]


def episode_messages(tokenizer: Any, work: Work) -> list[list[list[dict[str, str]]]]:
    """Per episode, per call: one user message whose rendering is about the target length."""
    text_ids = tokenizer(TEXT * 4, add_special_tokens=False)["input_ids"]
    (empty,) = render(tokenizer, [[{"role": "user", "content": ""}]])
    out = []
    for e in range(work.episodes):
        calls = []
        for c in range(work.calls):
            k = e * work.calls + c
            spread = (k * 7) % (2 * work.prompt_spread + 1) - work.prompt_spread
            length = max(1, work.prompt_tokens + spread - len(empty))
            start = (k * 13) % (len(text_ids) // 2)
            content = tokenizer.decode(text_ids[start : start + length])
            calls.append([{"role": "user", "content": content}])
        out.append(calls)
    return out


# ---------------------------------------------------------------------- the two sides
def run_engine(engine: Any, prompts_by_call: list[list[list[int]]], work: Work) -> dict[str, Any]:
    """One batched generate per call round; tokens / total generate time."""
    seconds, tokens = 0.0, 0
    for prompt_ids in prompts_by_call:
        started = time.perf_counter()
        batch = engine.generate(
            prompt_ids,
            n=1,
            max_new_tokens=work.new_tokens,
            temperature=work.temperature,
            top_p=1.0,
            top_k=0,
            seed=None,
        )
        seconds += time.perf_counter() - started
        tokens += sum(len(r) for r in batch.response_ids)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def serving_loop(server: Any, stop: threading.Event, max_calls: int, serve_batch: Any) -> None:
    """The job loop's part: take the pending calls (at most `max_calls`: one per open episode,
    so a full batch goes without waiting out the coalescing window), serve them as one batch
    with `serve_batch(calls, stamps) -> answers`, answer each with the batch's time stamps."""
    batch_index = 0
    while not stop.is_set():
        calls = server.take(timeout_s=0.05, max_calls=max_calls)
        if not calls:
            continue
        stamps = {
            "batch_index": batch_index,
            "batch_size": len(calls),
            "taken_at": time.monotonic(),
        }
        try:
            answers = serve_batch(calls, stamps)
        except Exception as exc:  # the clients must not hang on a failed batch
            for call in calls:
                call.answer(500, {"code": "internal_error", "detail": repr(exc)})
            raise
        for call, answer in zip(calls, answers, strict=True):
            answer["bench"] = {**stamps, "received_at": call.received_at}
            answer["bench"]["answered_at"] = time.monotonic()
            call.answer(200, answer)
        batch_index += 1


def policy_batches(engine: Any, tokenizer: Any) -> Any:
    """`serve_batch` of the policy: render, `generate_batched`, decode."""
    from keel_worker.agents.batcher import GenerationRequest, generate_batched

    def serve_batch(calls: list[Any], stamps: dict[str, Any]) -> list[dict[str, Any]]:
        prompts = render(tokenizer, [call.body["messages"] for call in calls])
        requests = [
            GenerationRequest(prompt_ids, call.body["max_tokens"], call.body["temperature"], 1.0, 0)
            for call, prompt_ids in zip(calls, prompts, strict=True)
        ]
        stamps["generate_at"] = time.monotonic()
        results = generate_batched(engine, requests)
        stamps["generated_at"] = time.monotonic()
        return [_completion(tokenizer, result) for result in results]

    return serve_batch


def instant_batches(new_tokens: int) -> Any:
    """`serve_batch` that answers at once, with an answer of the policy's size and no tokens:
    the floor that the clients and HTTP alone put under the added latency."""

    def serve_batch(calls: list[Any], stamps: dict[str, Any]) -> list[dict[str, Any]]:
        stamps["generate_at"] = stamps["generated_at"] = time.monotonic()
        keel = {"sampled_ids": [0] * new_tokens, "logprobs": [-1.0] * new_tokens}
        return [{"usage": {"completion_tokens": 0}, "keel": keel} for _ in calls]

    return serve_batch


def _completion(tokenizer: Any, result: Any) -> dict[str, Any]:
    text = tokenizer.decode(result.sampled_ids, skip_special_tokens=True)
    return {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {"completion_tokens": len(result.sampled_ids)},
        "keel": {"sampled_ids": result.sampled_ids, "logprobs": result.logprobs},
    }


def run_served(serve_batch: Any, messages: list, work: Work) -> dict[str, Any]:
    """The episodes as concurrent clients (another process) of a real policy server on this
    one, whose main thread runs the serving loop; tokens / the clients' wall time."""
    import multiprocessing

    from keel_worker.agents.server import SECRET_HEADER, PolicyServer

    stop = threading.Event()
    # Spawned, not forked: the child needs none of this process's torch state.
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    outcome: dict[str, Any] = {}

    def watch() -> None:
        """Wait for the clients' report, then stop the serving loop."""
        try:
            outcome.update(receiving.recv())
        except EOFError:
            outcome["error"] = "the client process ended without a report"
        finally:
            stop.set()

    with PolicyServer("127.0.0.1", 0, SECRET) as server:
        clients = context.Process(
            target=_clients_process,
            # The header's name travels along: the child imports no keel module (start-up time).
            args=(server.url, SECRET_HEADER, messages, asdict(work), sending),
        )
        clients.start()
        sending.close()  # the child holds its own end: recv() sees EOF if it dies
        watcher = threading.Thread(target=watch)
        watcher.start()
        # On this thread, as in the job loop.
        serving_loop(server, stop, work.episodes, serve_batch)
        watcher.join()
        clients.join()
    if "error" in outcome:
        raise RuntimeError(f"the served run failed: {outcome['error']}")
    calls = outcome["calls"]
    tokens = sum(c["tokens"] for c in calls)
    return {
        "seconds": outcome["seconds"],
        "tokens": tokens,
        "tokens_per_s": tokens / outcome["seconds"],
        "batches": _batches(calls),
        **{f"{k}_p50_s": statistics.median(c[f"{k}_s"] for c in calls) for k in SEGMENTS},
        "calls": sorted(calls, key=lambda c: (c["episode"], c["call"])),
    }


def _clients_process(
    url: str, header: str, messages: list, work: dict[str, Any], report: Any
) -> None:
    """The harness: every episode an asyncio task with its own kept-alive connection, all
    started together; sends back the wall time and each call's round trip."""
    try:
        report.send(asyncio.run(_run_clients(url, header, messages, Work(**work))))
    except BaseException as exc:
        report.send({"error": repr(exc)})


async def _run_clients(url: str, header: str, messages: list, work: Work) -> dict[str, Any]:
    import httpx

    async def episode(e: int, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        rows = []
        for c, call_messages in enumerate(messages[e]):
            body = {
                "messages": call_messages,
                "max_tokens": work.new_tokens,
                "temperature": work.temperature,
            }
            sent_at = time.monotonic()
            response = await client.post(f"{url}/episodes/ep{e}/chat/completions", json=body)
            response.raise_for_status()
            answer = response.json()
            done_at = time.monotonic()
            tokens = answer["usage"]["completion_tokens"]
            stamps = {**answer["bench"], "sent_at": sent_at, "done_at": done_at}
            rows.append({"episode": e, "call": c, "tokens": tokens, **_segments(stamps)})
        return rows

    clients = [
        httpx.AsyncClient(headers={header: SECRET}, timeout=600) for _ in range(work.episodes)
    ]
    try:
        # Open every connection before the clock, as the API's pool would hold them.
        for response in await asyncio.gather(*(c.get(f"{url}/health") for c in clients)):
            response.raise_for_status()
        started = time.perf_counter()
        rows = await asyncio.gather(*(episode(e, c) for e, c in enumerate(clients)))
        seconds = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return {"seconds": seconds, "calls": [row for episode_rows in rows for row in episode_rows]}


def _segments(stamps: dict[str, Any]) -> dict[str, Any]:
    """A call's time split at the stamps both processes took on the one monotonic clock."""
    s = stamps
    out = {
        "batch_index": s["batch_index"],
        "batch_size": s["batch_size"],
        "round_trip_s": s["done_at"] - s["sent_at"],
        "generate_s": s["generated_at"] - s["generate_at"],
        "request_s": s["received_at"] - s["sent_at"],
        "gather_s": s["taken_at"] - s["received_at"],
        "render_s": s["generate_at"] - s["taken_at"],
        "answer_s": s["answered_at"] - s["generated_at"],
        "response_s": s["done_at"] - s["answered_at"],
    }
    out["added_s"] = out["round_trip_s"] - out["generate_s"]
    out["in_server_s"] = out["gather_s"] + out["render_s"] + out["answer_s"]
    return out


def _batches(calls: list[dict[str, Any]]) -> list[int]:
    """The sizes of the served run's generate batches, in the order they ran."""
    sizes = {c["batch_index"]: c["batch_size"] for c in calls}
    return [sizes[i] for i in sorted(sizes)]


# ---------------------------------------------------------------------- the measurement
def measure(
    work: Work, *, repeats: int, out: Path, cache_dir: Path, warmup: bool = True
) -> dict[str, Any]:
    import torch

    from keel_worker.engines.hf import HFEngine
    from keel_worker.engines.models import load_model

    load_before = uptime()
    loaded = load_model(work.model, cache_dir=cache_dir)
    engine = HFEngine(loaded.model, loaded.tokenizer, precision=work.precision)
    engine.eos_ids = {-1}  # no token stops a response: exactly new_tokens each, on both sides
    messages = episode_messages(loaded.tokenizer, work)
    prompts_by_call = [
        render(loaded.tokenizer, [messages[e][c] for e in range(work.episodes)])
        for c in range(work.calls)
    ]
    lengths = [len(p) for call in prompts_by_call for p in call]
    warm = Work(**{**asdict(work), "episodes": min(4, work.episodes), "calls": 1, "new_tokens": 2})
    policy = policy_batches(engine, loaded.tokenizer)
    if warmup:
        run_engine(engine, [prompts_by_call[0][: warm.episodes]], warm)
        run_served(policy, messages[: warm.episodes], warm)
        run_served(instant_batches(work.new_tokens), messages[: warm.episodes], warm)

    record: dict[str, Any] = {
        "work": asdict(work),
        "prompt_tokens": {
            "min": min(lengths),
            "mean": statistics.mean(lengths),
            "max": max(lengths),
        },
        "machine": describe_machine(torch_threads=torch.get_num_threads()),
        "uptime_before": load_before,
        "repeats": [],
    }
    for repeat in range(repeats):
        engine_side = run_engine(engine, prompts_by_call, work)
        served = run_served(policy, messages, work)
        floor = run_served(instant_batches(work.new_tokens), messages, work)
        del floor["tokens_per_s"]  # it samples nothing
        record["repeats"].append(
            {"engine": engine_side, "served": served, "floor": floor, "load": load_averages()}
        )
        print(
            f"[{repeat + 1}/{repeats}] engine {engine_side['tokens_per_s']:.1f} tok/s, served "
            f"{served['tokens_per_s']:.1f} tok/s (batches {served['batches']}), added p50 "
            f"{1000 * served['added_p50_s']:.1f} ms (floor {1000 * floor['added_p50_s']:.1f} ms)",
            flush=True,
        )
    record["uptime_after"] = uptime()
    record["summary"] = summarize(record)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{NAME}.md").write_text(report(record))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.agent_serving", description=__doc__.splitlines()[0]
    )
    defaults = Work()
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--episodes", type=int, default=defaults.episodes)
    parser.add_argument("--calls", type=int, default=defaults.calls)
    parser.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    parser.add_argument("--precision", default=defaults.precision)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/keel/models")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Work(
        model=args.model,
        episodes=args.episodes,
        calls=args.calls,
        new_tokens=args.new_tokens,
        precision=args.precision,
    )
    record = measure(work, repeats=args.repeats, out=args.out, cache_dir=args.cache_dir)
    print(report(record))


if __name__ == "__main__":
    main()
