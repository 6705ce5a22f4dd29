"""An agent job's episode on the dashboard, in headless Chromium (the `page` fixture of
conftest.py): the API serves on a real port from this process over SQLite, the episode's turns
are written as the worker writes them (`record_rollouts`, then `add_turn` per model call), and
the rollout view shows them as turns: what the harness added (context, no loss), what the policy
sampled (trained), tool calls, token counts, and a new sequence where the history was edited.
A dataset job's rollout keeps its one prompt and completion."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from in_process import ADMIN_KEY, job_settings
from job_configs import tiny_job_config

import keel
from bench.embedded import live_api
from keel_server.db import episodes as episodes_db
from keel_server.db import make_engine, make_session_factory, session_scope, utcnow
from keel_server.db.rollouts import NewRollout, record_rollouts

TASK = {"q": 1}
CALL = {
    "id": "call_0",
    "type": "function",
    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
}
# (messages the harness added, reply, context tokens, sampled tokens, sequence, finish reason)
TURNS = [
    (
        [
            {"role": "system", "content": "Use the calculator."},
            {"role": "user", "content": "What is 2 + 3?"},
        ],
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        12,
        7,
        0,
        "stop",
    ),
    (
        [{"role": "tool", "tool_call_id": "call_0", "content": "5"}],
        {"role": "assistant", "content": "It is <b>5</b>."},  # shown as text, never as HTML
        4,
        5,
        0,
        "stop",
    ),
    (  # the harness edited its history: a new sequence with the whole rendering as context
        [{"role": "user", "content": "Again: 2 + 3?"}],
        {"role": "assistant", "content": "5"},
        9,
        2,
        1,
        "length",
    ),
]


def write_rollouts(
    database_url: str, job_id: str, rollouts: list[NewRollout], turns=()
) -> list[str]:
    """Step 1's `rollouts` of the job, and `turns` (rows like TURNS') as the first one's model
    calls, the way the worker writes them. Returns the rollouts' ids."""
    engine = make_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            rows = record_rollouts(
                session,
                job_id,
                step=1,
                policy_version=0,
                deadline_at=utcnow() + timedelta(minutes=10),
                rollouts=rollouts,
            )
            for index, (messages, reply, context, sampled, sequence, finish) in enumerate(turns):
                episodes_db.add_turn(
                    session,
                    rows[0].id,
                    index=index,
                    sequence_index=sequence,
                    context_ids=list(range(context)),
                    sampled_ids=list(range(sampled)),
                    logprobs=[-0.5] * sampled,
                    policy_version=0,
                    finish_reason=finish,
                    messages=messages,
                    reply=reply,
                    completion=reply["content"] or "",
                )
            return [row.id for row in rows]
    finally:
        engine.dispose()


def texts(page, selector: str) -> list[str]:
    return page.locator(selector).all_text_contents()


@pytest.mark.slow
def test_an_agent_episode_is_shown_as_its_turns_a_rollout_as_before(sqlite_url, tmp_path, page):
    settings = job_settings(sqlite_url, tmp_path)
    with live_api(settings) as url, keel.Client(base_url=url, api_key=ADMIN_KEY) as client:
        job = client.jobs.create(
            tiny_job_config(),
            name="agent",
            prompts={"type": "agent", "tasks": [TASK]},
            reward={"type": "external"},
        )
        episodes = [
            NewRollout(0, s, json.dumps(TASK), completion="", token_count=0) for s in (0, 1)
        ]
        episode_id, untouched_id = write_rollouts(settings.database_url, job.id, episodes, TURNS)

        page.goto(f"{url}/dashboard")
        page.fill("#api-key", ADMIN_KEY)
        page.click("#sign-in-form button")
        page.click(f'a[href="#/jobs/{job.id}"]')
        page.click(f'tr[data-rollout="{episode_id}"]')
        page.wait_for_selector("#episode-turns li[data-turn]")

        assert page.is_hidden("#rollout-detail .single-turn")  # no single completion to show
        assert page.text_content("#rollout-prompt-label") == "Task"
        assert json.loads(page.text_content("#rollout-prompt")) == TASK
        assert page.text_content("#episode-summary") == (
            "3 turn(s) in 2 sequence(s) · 25 context tokens (no loss) · 14 sampled tokens (trained)"
        )
        turns = page.locator("#episode-turns li[data-turn]")
        assert [turns.nth(i).get_attribute("data-turn") for i in range(3)] == ["0", "1", "2"]

        first = '#episode-turns li[data-turn="0"]'
        assert texts(page, f"{first} .context .message .role") == ["system", "user"]
        assert texts(page, f"{first} .context .content") == [
            "Use the calculator.",
            "What is 2 + 3?",
        ]
        assert texts(page, f"{first} .sampled .tool-call") == ['add({"a": 2, "b": 3})']
        assert page.locator(f"{first} .sampled .content").count() == 0  # content None: no text
        assert "trained" in page.text_content(f"{first} .sampled .role")
        assert page.text_content(f"{first} .turn-meta") == (
            "context 12 tokens (no loss) · sampled 7 tokens (trained) · policy v0 · sequence 0"
            " · finish stop"
        )

        second = '#episode-turns li[data-turn="1"]'
        assert texts(page, f"{second} .context .role") == ["tool result (call_0)"]
        assert texts(page, f"{second} .context .content") == ["5"]
        assert texts(page, f"{second} .sampled .content") == ["It is <b>5</b>."]
        assert page.locator(f"{second} b").count() == 0
        assert page.locator(f"{second} .tool-call").count() == 0
        assert "sampled 5 tokens (trained)" in page.text_content(f"{second} .turn-meta")

        # Only the turn whose sequence differs from the one before it is labelled.
        assert texts(page, "#episode-turns [data-new-sequence]") == [
            "history edited: new sequence 1"
        ]
        assert page.locator('#episode-turns li[data-turn="2"] [data-new-sequence]').count() == 1
        assert page.text_content('#episode-turns li[data-turn="2"] .turn-meta').endswith(
            "sequence 1 · finish length"
        )

        # Context and trained parts are told apart on the page, not only in the markup.
        background = "(selector) => getComputedStyle(document.querySelector(selector)).background"
        assert page.evaluate(background, f"{first} .context") != page.evaluate(
            background, f"{first} .sampled"
        )

        # Another episode replaces the turns rather than adding to them.
        page.click(f'tr[data-rollout="{untouched_id}"]')
        page.wait_for_function(
            "() => document.getElementById('episode-summary').textContent === 'No model call yet.'"
        )
        assert page.locator("#episode-turns li").count() == 0

        # A dataset job's rollout keeps its one prompt and completion.
        dataset = client.jobs.create(
            tiny_job_config(),
            prompts={"type": "dataset", "prompts": [{"text": "2 + 3?", "reference": "5"}]},
            reward={"type": "builtin", "verifier": "exact_match"},
        )
        single = NewRollout(0, 0, "2 + 3?", completion="five", token_count=1, reference="5")
        (rollout_id,) = write_rollouts(settings.database_url, dataset.id, [single])
        page.click("a.brand")
        page.click(f'a[href="#/jobs/{dataset.id}"]')
        page.click(f'tr[data-rollout="{rollout_id}"]')
        page.wait_for_selector("#rollout-completion:visible")
        assert page.text_content("#rollout-prompt-label") == "Prompt"
        assert page.text_content("#rollout-completion") == "five"
        assert page.is_hidden("#episode")
