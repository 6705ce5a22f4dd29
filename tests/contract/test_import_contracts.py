"""Contract: every module of keel, keel_server and keel_worker, and of the repository's research
harness, benchmarks and docs generator (`research`, `bench`, `docsgen`), is under an
import-linter contract of `.importlinter` (docs/architecture.md §3: a rule that no contract checks
is a rule nobody keeps).

A module is under a contract when the contract lists it, or a package above it, as a source.
The server is layered, so each of its modules must also sit in a layer (a source below the
`keel_server` package itself), not only under the server-wide rule. And every source a contract
names must exist, or the contract silently checks nothing.
"""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "keel": "client",
    "keel_server": "server",
    "keel_worker": "worker",
    "research": ".",
    "bench": ".",
    "docsgen": ".",
}
LAYERED = "keel_server"


def repo_modules() -> set[str]:
    modules = set()
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder / package).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def linter_config() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    return config


def contract_sources() -> dict[str, set[str]]:
    config = linter_config()
    return {
        section: set(config[section]["source_modules"].split())
        for section in config.sections()
        if section.startswith("importlinter:contract:")
    }


def _within(module: str, source: str) -> bool:
    return module == source or module.startswith(source + ".")


def test_every_module_is_the_source_of_some_contract():
    sources = set().union(*contract_sources().values())
    uncovered = sorted(m for m in repo_modules() if not any(_within(m, s) for s in sources))
    assert not uncovered, f"modules in no import-linter contract: {uncovered}"


def test_every_server_module_sits_in_a_layer():
    layers = {s for group in contract_sources().values() for s in group if s != LAYERED}
    server = {m for m in repo_modules() if _within(m, LAYERED) and m != LAYERED}
    unlayered = sorted(m for m in server if not any(_within(m, s) for s in layers))
    assert not unlayered, f"server modules in no layer contract: {unlayered}"


def test_every_contract_source_exists():
    modules = repo_modules()
    for section, sources in contract_sources().items():
        assert sources, section
        missing = sorted(s for s in sources if s not in modules)
        assert not missing, f"{section} names modules that do not exist: {missing}"


def test_the_guard_cases_reach_no_benchmark_but_the_embedded_service():
    forbidden = set(contract_sources_key("importlinter:contract:research-service"))
    bench = {m for m in repo_modules() if _within(m, "bench") and m != "bench"}
    unlisted = sorted(bench - forbidden - {"bench.embedded"})
    assert not unlisted, f"bench modules research.guard_service is not kept from: {unlisted}"


# The research harness's allow list (the comment above `research-allowed` in .importlinter).
RESEARCH_MAY_IMPORT = {
    "keel.types",
    *(
        f"keel_worker.engines.{m}"
        for m in ("chat", "hardware", "hf", "models", "routing_replay", "sampling")
    ),
    *(
        f"keel_worker.training.{m}"
        for m in ("batching", "forward", "guard", "replay_auto", "run", "scoring", "step", "tasks")
    ),
}


def test_every_product_module_is_allowed_to_or_forbidden_for_the_research_harness():
    """The harness's contract is an allow list written as a forbidden list: a new module of the
    product must land on one side, or the harness could import it unchecked."""
    forbidden = set(contract_sources_key("importlinter:contract:research-allowed"))
    product = {"keel", "keel_server", "keel_worker"}
    modules = {m for m in repo_modules() if m.split(".")[0] in product}
    parents = {m.rsplit(".", 1)[0] for m in modules if "." in m}
    unclassified = sorted(
        m
        for m in modules
        if m not in product
        and m not in parents
        and not any(_within(m, s) for s in forbidden | RESEARCH_MAY_IMPORT)
    )
    assert not unclassified, f"neither allowed to nor forbidden for research: {unclassified}"


def contract_sources_key(section: str) -> list[str]:
    return linter_config()[section]["forbidden_modules"].split()
