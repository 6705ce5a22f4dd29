"""Running an agent job's episodes from your own harness (docs/concepts/agents.md).

    with keel.Client() as client:
        for episode in keel.agents.episodes(client, job_id):
            llm = episode.openai()          # an `openai.OpenAI` on the episode's own key
            ...                             # your multi-turn loop: tools, environment, user turns
            episode.reward(score)           # once, when the episode is done

`episodes` claims open episodes as the job opens them and stops when the job ends; each comes
with an `openai` client (sync or async) whose `base_url` and `api_key` reach the live policy for
that episode only. The `openai` package is needed for `.openai()` / `.async_openai()` only
(`pip install 'keel-rl[agents]'`); the rest of the SDK does without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from keel._client import AsyncClient, Client
from keel._errors import ConflictError
from keel.types.agents import Episode
from keel.types.rewards import RewardResult

if TYPE_CHECKING:
    import openai

DEFAULT_WAIT_S = 10.0


class AgentEpisode:
    """A claimed episode: its task, an `openai` client for its calls, and its reward."""

    def __init__(self, episode: Episode, client: Client | AsyncClient) -> None:
        self.episode = episode
        self._client = client

    @property
    def id(self) -> str:
        return self.episode.id

    @property
    def task(self) -> dict[str, Any]:
        return self.episode.task

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        """An `openai.OpenAI` for this episode (extra keyword arguments go to it)."""
        import openai

        return openai.OpenAI(base_url=self.episode.base_url, api_key=self._key(), **kwargs)

    def async_openai(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """An `openai.AsyncOpenAI` for this episode (extra keyword arguments go to it)."""
        import openai

        return openai.AsyncOpenAI(base_url=self.episode.base_url, api_key=self._key(), **kwargs)

    def reward(self, value: float) -> RewardResult:
        """Post the episode's one reward (sync client)."""
        if not isinstance(self._client, Client):
            raise TypeError("this episode came from an AsyncClient: `await episode.areward(...)`")
        return self._client.rewards.create(self.id, value)

    async def areward(self, value: float) -> RewardResult:
        """Post the episode's one reward (async client)."""
        if not isinstance(self._client, AsyncClient):
            raise TypeError("this episode came from a Client: `episode.reward(...)`")
        return await self._client.rewards.create(self.id, value)

    def _key(self) -> str:
        if self.episode.api_key is None:
            raise ValueError(f"episode {self.id} was not claimed here: it carries no key")
        return self.episode.api_key

    def __repr__(self) -> str:
        return f"AgentEpisode({self.id!r}, step={self.episode.step}, task={self.task!r})"


def episodes(
    client: Client, job_id: str, *, batch: int = 8, wait_s: float = DEFAULT_WAIT_S
) -> Iterator[AgentEpisode]:
    """Claim the job's episodes as they open, `batch` at a time, until the job ends."""
    while True:
        try:
            claimed = client.episodes.claim(job_id, max_episodes=batch, wait_s=wait_s)
        except ConflictError as exc:
            if _job_ended(exc):
                return
            raise
        for episode in claimed.data:
            yield AgentEpisode(episode, client)


async def aepisodes(
    client: AsyncClient, job_id: str, *, batch: int = 8, wait_s: float = DEFAULT_WAIT_S
) -> AsyncIterator[AgentEpisode]:
    """`episodes` for an `AsyncClient`."""
    while True:
        try:
            claimed = await client.episodes.claim(job_id, max_episodes=batch, wait_s=wait_s)
        except ConflictError as exc:
            if _job_ended(exc):
                return
            raise
        for episode in claimed.data:
            yield AgentEpisode(episode, client)


def _job_ended(exc: ConflictError) -> bool:
    """A claim's 409 for a job that ended (it carries the job's state) rather than another."""
    return bool(exc.state and exc.state.get("status"))
