"""`client.episodes`: claim an agent job's open episodes; read one back with its turns."""

from __future__ import annotations

from keel.resources._base import AsyncResource, Call, SyncResource
from keel.types.agents import EpisodeClaimed, EpisodeDetail


def _claim(job_id: str, max_episodes: int, wait_s: float) -> Call:
    body = {"max_episodes": max_episodes, "wait_s": wait_s}
    return Call("POST", f"/v1/jobs/{job_id}/episodes/claim", EpisodeClaimed, json=body)


def _retrieve(episode_id: str) -> Call:
    return Call("GET", f"/v1/episodes/{episode_id}", EpisodeDetail)


class Episodes(SyncResource):
    def claim(self, job_id: str, *, max_episodes: int = 1, wait_s: float = 0.0) -> EpisodeClaimed:
        """Up to `max_episodes` open episodes, each with its `base_url` and `api_key`; waits up to
        `wait_s` for one to open. `ConflictError` once the job has ended."""
        return self._run(_claim(job_id, max_episodes, wait_s))

    def retrieve(self, episode_id: str) -> EpisodeDetail:
        return self._run(_retrieve(episode_id))


class AsyncEpisodes(AsyncResource):
    async def claim(
        self, job_id: str, *, max_episodes: int = 1, wait_s: float = 0.0
    ) -> EpisodeClaimed:
        """Up to `max_episodes` open episodes, each with its `base_url` and `api_key`; waits up to
        `wait_s` for one to open. `ConflictError` once the job has ended."""
        return await self._run(_claim(job_id, max_episodes, wait_s))

    async def retrieve(self, episode_id: str) -> EpisodeDetail:
        return await self._run(_retrieve(episode_id))
