"""Secrets: API keys and per-job reward tokens are random, shown once, stored as sha256.

They carry 256 bits of entropy, so an unsalted sha256 is safe to store and lets a request's key be
looked up by its hash. Prefixes tell the two kinds apart: `keel_sk_` (API key), `keel_rt_`
(reward token).

Secrets keel must read back are sealed (Fernet: AES-128-CBC + HMAC-SHA256) with the operator's
`Settings.secret_key`: a job's webhook secret, which the worker signs with, and its reward token,
which an idempotent repeat of `POST /v1/jobs` returns again. Without `KEEL_SECRET_KEY` the key is
`<home>/secret_key`, created (owner-only) on first use; API and workers on other machines must
then be given the same `KEEL_SECRET_KEY`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from keel_server.platform.settings import Settings

SECRET_KEY_FILE = "secret_key"


class SealError(ValueError):
    """A sealed secret does not open with this key (KEEL_SECRET_KEY differs from the sealer's)."""


API_KEY_PREFIX = "keel_sk_"
REWARD_TOKEN_PREFIX = "keel_rt_"
EPISODE_KEY_PREFIX = "keel_ep_"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_reward_token() -> str:
    return REWARD_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def sealing_key(settings: Settings) -> str:
    """`Settings.secret_key`, else the key in `<home>/secret_key` (created 0600 if missing)."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.home) / SECRET_KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(Fernet.generate_key().decode() + "\n")
    return path.read_text().strip()


def seal(key: str, secret: str) -> str:
    return Fernet(key.encode()).encrypt(secret.encode()).decode()


def unseal(key: str, sealed: str) -> str:
    try:
        return Fernet(key.encode()).decrypt(sealed.encode()).decode()
    except InvalidToken as exc:
        raise SealError(
            "a stored secret does not decrypt with this process's secret key: give the API and "
            "every worker the same KEEL_SECRET_KEY"
        ) from exc


# Keys derived from the sealing key: the API and every worker already share it, so an agent
# episode's key and a job's policy-server secret need no storage and no lookup to verify.


def _derive(key: str, purpose: str) -> str:
    mac = hmac.new(key.encode(), purpose.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def episode_key(key: str, rollout_id: str) -> str:
    """The key of one agent episode: `keel_ep_<rollout id>.<mac>`, good for that episode only."""
    return f"{EPISODE_KEY_PREFIX}{rollout_id}.{_derive(key, 'episode:' + rollout_id)}"


def episode_of_key(key: str, token: str) -> str | None:
    """The rollout id an episode key was made for, or None when it was not made with `key`."""
    rollout_id, _, mac = token.removeprefix(EPISODE_KEY_PREFIX).rpartition(".")
    if not rollout_id or not same_secret(mac, _derive(key, "episode:" + rollout_id)):
        return None
    return rollout_id


def serve_secret(key: str, job_id: str) -> str:
    """What the API shows a job's policy server so that it answers (its `X-Keel-Serve-Secret`)."""
    return _derive(key, "serve:" + job_id)
