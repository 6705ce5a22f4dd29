"""A stand-alone reward service for the end-to-end tests, run as its own process.

It implements the documented webhook contract from scratch (no keel_server import): check
`X-Keel-Signature: v1=HMAC-SHA256(secret, f"{X-Keel-Timestamp}." + body)`, answer 202 at once,
then post one score per rollout through the SDK with the job's reward token. Every accepted post
is appended to a JSON-lines log so the tests can check that no posted reward was lost.

    python reward_service.py PORT SECRET TOKEN_FILE BASE_URL LOG_FILE
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import keel

TOLERANCE_S = 300


def signature_ok(secret: str, headers, body: bytes) -> bool:
    try:
        timestamp = int(headers["X-Keel-Timestamp"])
        given = headers["X-Keel-Signature"]
    except (KeyError, TypeError, ValueError):
        return False
    if abs(time.time() - timestamp) > TOLERANCE_S:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest("v1=" + expected.hexdigest(), given)


def score(completion: str) -> float:
    """Varied, deterministic rewards for an untrained model: parity of the byte sum."""
    return float(sum(completion.encode()) % 2 == 0)


def main() -> None:
    port, secret, token_file, base_url, log_file = sys.argv[1:6]
    log_lock = threading.Lock()

    def client() -> keel.Client:
        path = Path(token_file)
        while not path.exists():
            time.sleep(0.05)
        return keel.Client(
            base_url=base_url, api_key=path.read_text().strip(), max_retries=6, backoff_base_s=0.2
        )

    def post(rollouts: list[dict]) -> None:
        scores = {r["id"]: score(r["completion"]) for r in rollouts}
        with client() as sdk:
            results = sdk.rewards.batch(scores).results
        with log_lock, open(log_file, "a") as fh:
            for result in results:
                fh.write(
                    json.dumps(
                        {
                            "id": result.rollout_id,
                            "value": scores[result.rollout_id],
                            "ok": result.ok,
                        }
                    )
                    + "\n"
                )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if not signature_ok(secret, self.headers, body):
                self.send_response(401)
                self.end_headers()
                return
            rollouts = json.loads(body)["rollouts"]
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            threading.Thread(target=post, args=(rollouts,), daemon=True).start()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    print(f"reward service on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
