"""The seed's four common patterns, tested with the kit in milliseconds of wall time: each example project of
examples/ is copied to the test's directory and loaded as the ``project`` fixture loads one."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stepstone.pytest_plugin import TestProject, open_project
from stepstone.testing import (
    introspect_workflow,
    introspect_workflow_instance,
    wait_for_event_wait,
    wait_for_status,
    wait_for_step_result,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DAY = 86400.0


async def example(tmp_path: Path, name: str) -> AsyncIterator[TestProject]:
    root = tmp_path / name
    shutil.copytree(EXAMPLES / name, root, ignore=shutil.ignore_patterns("data", ".stepstone", "public"))
    async with open_project(root, f"sqlite:///{tmp_path / 'stepstone.db'}") as project:
        yield project


@pytest.fixture
async def images(tmp_path: Path) -> AsyncIterator[TestProject]:
    async for project in example(tmp_path, "image-pipeline"):
        yield project


@pytest.fixture
async def lifecycle(tmp_path: Path) -> AsyncIterator[TestProject]:
    async for project in example(tmp_path, "user-lifecycle"):
        yield project


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[TestProject]:
    async for project in example(tmp_path, "data-pipeline"):
        yield project


@pytest.fixture
async def approvals(tmp_path: Path) -> AsyncIterator[TestProject]:
    async for project in example(tmp_path, "approval"):
        yield project


# -- image pipeline: mock the model, answer the approval -------------------------------------------------------
async def test_image_pipeline_publishes_once_approved_with_the_model_mocked(images: TestProject) -> None:
    wf = images.env.IMAGE_PIPELINE
    async with introspect_workflow_instance(wf, "img-1") as inst:
        await inst.modify(
            lambda m: m.mock_step_result("generate description", {"description": "a cat"}).mock_event("approved", {})
        )
        await wf.create(id="img-1", params={"imageKey": "gradient.png"})
        output = (await inst.wait_for_status("complete")).output
        fetched = await inst.wait_for_step_result("fetch image")
    assert output == {"published": True, "location": "bucket/public/gradient.png", "description": "a cat"}
    assert (images.root / "bucket" / "public" / "gradient.png").read_bytes() == fetched  # bytes replayed exactly


async def test_image_pipeline_unapproved_for_a_day_is_not_published(images: TestProject) -> None:
    inst = await images.env.IMAGE_PIPELINE.create(params={"imageKey": "gradient.png"})
    await wait_for_event_wait(inst, "approved")  # nobody answers: the clock skips the 24 hours
    assert (await wait_for_status(inst, "complete")).output["published"] is False
    assert images.clock.elapsed >= DAY
    assert not (images.root / "bucket" / "public").exists()


# -- user lifecycle: a 7-day trial in no time -----------------------------------------------------------------
def outbox(project: TestProject) -> list[str]:
    with sqlite3.connect(project.root / project.env.APP_DB) as db:
        return [row[0] for row in db.execute("SELECT subject FROM outbox ORDER BY rowid")]


async def test_user_lifecycle_reminds_a_user_who_did_not_convert(lifecycle: TestProject) -> None:
    inst = await lifecycle.env.USER_LIFECYCLE.create(params={"userId": "u1", "email": "ada@example.com"})
    assert (await wait_for_status(inst, "complete")).output == {"converted": False}
    assert outbox(lifecycle) == ["Welcome!", "Your trial is ending"]
    assert lifecycle.clock.elapsed >= 7 * DAY


async def test_user_lifecycle_leaves_a_converted_user_alone(lifecycle: TestProject) -> None:
    async with introspect_workflow(lifecycle.env.USER_LIFECYCLE) as users:
        await users.modify(lambda m: m.mock_step_result("check conversion", True))
        inst = await lifecycle.env.USER_LIFECYCLE.create(params={"userId": "u2", "email": "bob@example.com"})
        assert (await wait_for_status(inst, "complete")).output == {"converted": True}
        assert [i.id for i in users.get()] == [inst.id]
    assert outbox(lifecycle) == ["Welcome!"]


# -- data pipeline: retries, without waiting for their delays -------------------------------------------------
async def test_data_pipeline_retries_the_extract_and_the_load(pipeline: TestProject) -> None:
    wf = pipeline.env.DATA_PIPELINE
    async with introspect_workflow_instance(wf, "run-1") as inst:
        await inst.modify(
            lambda m: m.disable_retry_delays().mock_step_error("load to database", ConnectionError("db away"), 2)
        )
        await wf.create(id="run-1", params={"source": "sample.csv"})
        output = (await inst.wait_for_status("complete")).output
        steps = {s.name: s for s in await inst.instance.history()}
    assert output["extracted"] == output["rows"] > 0
    assert [a.success for a in steps["extract data"].attempts] == [False, True]  # FLAKY_EXTRACTS = 1
    assert [a.error_name for a in steps["load to database"].attempts] == ["ConnectionError", "ConnectionError", None]


async def test_data_pipeline_gives_up_after_the_retry_limit(pipeline: TestProject) -> None:
    wf = pipeline.env.DATA_PIPELINE
    async with introspect_workflow_instance(wf, "run-2") as inst:
        await inst.modify(lambda m: m.mock_step_error("extract data", ConnectionError("source down")))
        await wf.create(id="run-2", params={"source": "sample.csv"})
        with pytest.raises(ConnectionError, match="source down"):
            await inst.wait_for_step_result("extract data")
        await inst.wait_for_status("errored")
        assert (await inst.get_error()).name == "ConnectionError"
    assert pipeline.clock.elapsed >= 2**9 - 1  # the exponential delays (1 s doubling, 10 retries) were skipped


# -- human in the loop: answer, or let the 48 hours run out ---------------------------------------------------
def approval_status(project: TestProject, request: str) -> str:
    with sqlite3.connect(project.root / project.env.APP_DB) as db:
        return str(db.execute("SELECT status FROM approvals WHERE id = ?", (request,)).fetchone()[0])


async def test_approval_answered_by_a_human(approvals: TestProject) -> None:
    inst = await approvals.env.APPROVAL.create(id="req-1", params={"userId": "u1"})
    await wait_for_event_wait(inst, "approval-response")
    assert approval_status(approvals, "req-1") == "pending"
    await inst.send_event(type="approval-response", payload={"approved": False, "note": "not now"})
    assert (await wait_for_status(inst, "complete")).output["status"] == "rejected"
    assert approval_status(approvals, "req-1") == "rejected"
    assert await wait_for_step_result(inst, "handle rejection") is None


async def test_approval_auto_rejected_when_nobody_answers(approvals: TestProject) -> None:
    inst = await approvals.env.APPROVAL.create(id="req-2", params={"userId": "u2"})
    assert (await wait_for_status(inst, "complete")).output == {"status": "auto-rejected"}
    assert approval_status(approvals, "req-2") == "auto-rejected"
    assert approvals.clock.elapsed >= 48 * 3600
