"""Webhook signing (HMAC-SHA256 over timestamp + body), as receivers verify it."""

from __future__ import annotations

import hashlib
import hmac

from keel import webhooks


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhooks.sign("s3cret", 1700000000, body) == "v1=" + expected


def test_verify_accepts_fresh_and_rejects_tampered_or_stale() -> None:
    body = b'{"rewards": []}'
    headers = webhooks.signed_headers("k" * 20, body, job_id="job_1", timestamp=1000)
    assert webhooks.verify("k" * 20, headers, body, now=1010)
    lower = {k.lower(): v for k, v in headers.items()}
    assert webhooks.verify("k" * 20, lower, body, now=1010)
    assert not webhooks.verify("k" * 20, headers, body + b" ", now=1010)
    assert not webhooks.verify("other-secret-xxxxx", headers, body, now=1010)
    assert not webhooks.verify("k" * 20, headers, body, now=1000 + 301)
    assert not webhooks.verify("k" * 20, {}, body, now=1000)
