"""The web dashboard as a person uses it, in headless Chromium (the `page` fixture of
conftest.py), against the real API and a real Celery worker on PostgreSQL and Redis: sign in with
a project's API key, see only that project's job, watch its curves grow from the SSE stream, pause
and resume it from the page, open a rollout, download a checkpoint, and keep a screenshot of the
job page."""

from __future__ import annotations

from pathlib import Path

import pytest

import keel

POINTS = "Number(document.querySelector('[data-chart=\"reward/mean\"]')?.dataset.points ?? 0)"
STATUS = "document.getElementById('job-status').textContent"


def points(page) -> int:
    return page.evaluate(f"() => {POINTS}")


def wait_points_above(page, n: int) -> int:
    page.wait_for_function(f"() => {POINTS} > {n}", timeout=90_000)
    return points(page)


def wait_status(page, status: str) -> None:
    page.wait_for_function(f"() => {STATUS} === '{status}'", timeout=90_000)


@pytest.mark.slow
def test_dashboard_watch_pause_resume_and_open_a_rollout(production_stack, helpers, page, tmp_path):
    base_url = production_stack.api()
    production_stack.worker("w1")
    admin = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    key = admin.keys.create(project="team-a", name="dashboard").key
    user = keel.Client(base_url=base_url, api_key=key)
    job = user.jobs.create(helpers.job_config(steps=400, checkpoint_every=0), name="watched")
    elsewhere = admin.jobs.create(helpers.job_config(), name="another project's job")
    admin.jobs.cancel(elsewhere.id)

    page.goto(f"{base_url}/dashboard")
    page.fill("#api-key", key)
    page.click("#sign-in-form button")
    page.wait_for_selector(f'tr[data-job="{job.id}"]')
    assert page.locator("tr[data-job]").count() == 1  # the admin's project stays invisible

    page.click(f'a[href="#/jobs/{job.id}"]')
    first = wait_points_above(page, 1)
    grown = wait_points_above(page, first)  # live: new steps arrive without a reload
    assert grown > first
    assert page.locator('[data-heatmap="routing/infer_vs_train_L"] rect').count() > 0

    page.click('#job-actions [data-action="pause"]')
    wait_status(page, "paused")
    assert user.jobs.retrieve(job.id).status == "paused"
    at_pause = points(page)
    served = [m.step for m in user.metrics.list(job.id, name="reward/mean")]
    assert at_pause == len(served)  # one point per completed step, as the API serves them

    page.click('#job-actions [data-action="resume"]')
    wait_status(page, "running")
    assert wait_points_above(page, at_pause) > at_pause  # training goes on after the resume

    rollout = user.rollouts.list(job.id, step=1).data[0]
    page.fill("#rollout-step", "1")
    page.click("#rollout-filter button")
    page.click(f'tr[data-rollout="{rollout.id}"]')
    page.wait_for_selector("#rollout-detail:not([hidden])")
    assert page.text_content("#rollout-completion") == rollout.completion
    assert page.text_content("#rollout-prompt") == rollout.prompt
    assert page.text_content("#rollout-status") == rollout.status

    (checkpoint,) = user.checkpoints.list(job.id).data  # the one the pause wrote
    page.wait_for_selector(f'tr[data-checkpoint="{checkpoint.id}"] button')
    with page.expect_download() as download:
        page.click(f'tr[data-checkpoint="{checkpoint.id}"] button')
    assert Path(download.value.path()).stat().st_size == checkpoint.kinds["weights"].size_bytes

    shot = tmp_path / "dashboard.png"  # the test's artifact
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    page.click('#job-actions [data-action="cancel"]')
    wait_status(page, "cancelled")
    assert user.jobs.retrieve(job.id).status == "cancelled"


@pytest.mark.slow
def test_dashboard_shows_what_the_guard_did(production_stack, helpers, page):
    """The guard's pause (`helpers.guard_pause_job_config`) as a user sees it: the summary with
    its reason, the event in the guard table, the mark on the curves."""
    base_url = production_stack.api()
    production_stack.worker("w1")
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    job = client.jobs.create(helpers.guard_pause_job_config(), name="guarded")

    page.goto(f"{base_url}/dashboard")
    page.fill("#api-key", helpers.admin_key)
    page.click("#sign-in-form button")
    page.click(f'a[href="#/jobs/{job.id}"]')
    wait_status(page, "paused")
    paused = client.jobs.retrieve(job.id)
    page.wait_for_selector('#guard-events tr[data-guard-trigger="is_fraction"]')
    assert page.text_content("#job-guard") == (
        f"Guard: 1 trigger(s) fired · last: {paused.guard.last_reason}"
    )
    row = page.locator('#guard-events tr[data-guard-step="1"] td')
    assert row.all_text_contents()[:3] == ["1", "is_fraction", "pause"]
    assert page.locator('[data-chart="reward/mean"] line.guard-mark').count() == 1

    page.goto(f"{base_url}/dashboard#/")
    page.wait_for_selector(f'tr[data-job="{job.id}"] .guard-count')
    assert "guard ×1" in page.text_content(f'tr[data-job="{job.id}"] .guard-count')
