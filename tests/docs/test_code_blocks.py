"""Docs that run: every Python block of README.md and of every page under docs/ is executed, so a
renamed field or method breaks the build, not the reader.

How a page runs: its Python blocks run in page order in one namespace, as a reader who pastes
them one after the other into one Python session (a later block uses the `client` or `job` an
earlier one made), in an empty working directory of the page's own (downloads land there), with
`__name__` set to "docs": a block written as a script ends with
`if __name__ == "__main__": serve_forever()` and defines its parts here without blocking. A page
one of whose blocks builds an SDK client (`Client(` or `AsyncClient(`) runs against a real
`keel up` (the `keel_service` fixture: API + one worker, started once for this module) with
`KEEL_BASE_URL` and `KEEL_API_KEY` set, which `keel.Client()` reads; what the reader runs is what
runs here, so the pages size their jobs to run in seconds. Such pages are marked slow.

Blocks in other languages (bash, yaml, json, text) are not run. A Python block opts out only with
the marker `# docs: not run — <why>` as its first line (`markdown_blocks.py`); the opt-outs are
counted and held to `OPT_OUT_BUDGET`. New pages are picked up by path: nothing to register.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
from markdown_blocks import Block, fenced_blocks, page_blocks, pages

ROOT = Path(__file__).resolve().parents[2]
PAGES = {page.relative_to(ROOT).as_posix(): page_blocks(ROOT, page) for page in pages(ROOT)}
# Blocks that cannot run on a CPU-only test machine (a GPU, vLLM, a model from the hub). A new
# opt-out has to make room here, so that "not run" stays the exception it is.
OPT_OUT_BUDGET = 4
# Pages whose Python is the reader's first contact: they must have blocks, and every one runs.
MUST_RUN = (
    "README.md",
    "docs/getting-started.md",
    "docs/how-to/reward-service.md",
    "docs/how-to/lora.md",
    "docs/how-to/checkpoints.md",
    "docs/how-to/deploy.md",
    "docs/how-to/monitoring.md",
)


def _runnable(page: str) -> list[Block]:
    return [block for block in PAGES[page] if block.runs]


def _page_params() -> list:
    params = []
    for page in PAGES:
        blocks = _runnable(page)
        if blocks:
            slow = [pytest.mark.slow] if any(b.talks_to_keel for b in blocks) else []
            params.append(pytest.param(page, marks=slow, id=page))
    return params


@pytest.mark.parametrize("page", _page_params())
def test_the_python_blocks_of_the_page_run(page, request, tmp_path, monkeypatch):
    blocks = _runnable(page)
    if any(block.talks_to_keel for block in blocks):
        request.getfixturevalue("keel_service")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs", "__builtins__": builtins}
    for block in blocks:
        # Padded to the block's line: a traceback names the page and the line the reader sees.
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(ROOT / block.page), "exec"), namespace)


def test_opt_outs_give_their_reason_and_stay_within_the_budget():
    python = [block for blocks in PAGES.values() for block in blocks if block.is_python]
    opted_out = [f"{b.page}:{b.line}: {b.opt_out}" for b in python if b.opt_out is not None]
    malformed = [
        f"{b.page}:{b.line}"
        for b in python
        if b.opt_out is None and b.code.lstrip().lower().startswith("# docs:")
    ]
    assert not malformed, f"a `# docs:` marker that is not `# docs: not run — <why>`: {malformed}"
    assert len(opted_out) <= OPT_OUT_BUDGET, "\n".join(opted_out)
    assert all(block.code.count("\n") > 1 for block in python if block.opt_out is not None)


@pytest.mark.parametrize("page", MUST_RUN)
def test_the_front_pages_have_python_that_runs(page):
    python = [block for block in PAGES[page] if block.is_python]
    assert python, f"{page} has no Python block"
    if page == "README.md":
        assert all(block.runs for block in python), "every README block runs"
    assert _runnable(page)


def test_blocks_are_found_as_a_reader_sees_them():
    text = "\n".join(
        [
            "# A page",  # 1
            "```bash",  # 2
            "keel up",  # 3
            "```",  # 4
            "- a list item:",  # 5
            "",  # 6
            "    ```python",  # 7
            "    import keel",  # 8
            "    if True:",  # 9
            "        print(keel)",  # 10
            "    ```",  # 11
            '~~~{.python title="x"}',  # 12
            "# docs: not run — needs a GPU",  # 13
            "client.jobs.create({})",  # 14
            "~~~",  # 15
            "```py",  # 16
            "# docs: not run",  # 17: no reason given, so it runs
            "````",  # 18
            "```",  # 19: a plain fence, no language
            "x",  # 20
            "```",  # 21
        ]
    )
    blocks = fenced_blocks(text, "page.md")
    assert [(b.line, b.language) for b in blocks] == [
        (3, "bash"),
        (8, "python"),
        (13, "python"),
        (17, "py"),
        (20, ""),
    ]
    assert blocks[1].code == "import keel\nif True:\n    print(keel)\n"
    assert [b.opt_out for b in blocks] == [None, None, "needs a GPU", None, None]
    assert [b.runs for b in blocks] == [False, True, False, True, False]
    assert [b.talks_to_keel for b in blocks] == [False, False, False, False, False]
    assert fenced_blocks("```python\nkeel.Client()\n```\n", "p.md")[0].talks_to_keel
