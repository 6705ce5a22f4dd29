"""The load generator of `bench/reward_ingest.py`: concurrent clients posting rewards.

The clients are one asyncio loop speaking minimal HTTP/1.1 over raw streams, one keep-alive
connection each: the load generator shares the machine's cores with the server and PostgreSQL,
and httpx costs ~1.5 ms of CPU per request, a large share of what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Post:
    rollout_id: str
    value: float


@dataclass
class Result:
    rollout_id: str
    value: float
    status: int  # HTTP status; 0 = transport error
    created: bool
    latency_s: float


def post_all(url: str, token: str, posts: list[Post], clients: int) -> tuple[list[Result], float]:
    """Post everything from `clients` concurrent clients (one keep-alive connection each, one
    asyncio loop); returns results and wall time."""
    return asyncio.run(_post_all(url, token, posts, clients))


async def _post_all(
    url: str, token: str, posts: list[Post], clients: int
) -> tuple[list[Result], float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"Host: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n"
    )
    results: list[Result] = []
    todo = iter(posts)

    async def client() -> None:
        connection = None
        try:
            for post in todo:  # one loop, so `todo` is shared without a lock
                if connection is None:
                    connection = await asyncio.open_connection(host, port)
                result, keep_alive = await _post_one(connection, head, post)
                results.append(result)
                if not keep_alive:  # failed, or the server closes it: open another
                    await _close(connection[1])
                    connection = None
        finally:
            if connection is not None:
                await _close(connection[1])

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return results, time.perf_counter() - start


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _post_one(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], head: str, post: Post
) -> tuple[Result, bool]:
    """One POST of a reward and its answer, read by its Content-Length (uvicorn sends one with
    every JSON answer); also whether the connection stays open. Status 0: the connection failed,
    or the answer was not what this reads."""
    reader, writer = connection
    body = json.dumps({"value": post.value}).encode()
    request = (
        f"POST /v1/rollouts/{post.rollout_id}/reward HTTP/1.1\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    start = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            writer.write(request)
            await writer.drain()
            status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            status = int(status_line.split()[1])
            answer = await reader.readexactly(int(headers[b"content-length"]))
        created = status == 200 and json.loads(answer).get("created") is True
    except (
        OSError,
        TimeoutError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        KeyError,
        IndexError,
        ValueError,
    ):
        return Result(post.rollout_id, post.value, 0, False, time.perf_counter() - start), False
    latency_s = time.perf_counter() - start
    keep_alive = headers.get(b"connection", b"").lower() != b"close"
    return Result(post.rollout_id, post.value, status, created, latency_s), keep_alive
