"""Secrets: API keys and per-job reward tokens are random, shown once, stored as sha256.

They carry 256 bits of entropy, so an unsalted sha256 is safe to store and lets a request's key be
looked up by its hash. Prefixes tell the two kinds apart: `keel_sk_` (API key), `keel_rt_`
(reward token).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_KEY_PREFIX = "keel_sk_"
REWARD_TOKEN_PREFIX = "keel_rt_"


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
