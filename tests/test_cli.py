"""The `stepstone` command over a real project directory: wrangler's verbs, their output, --json, and errors.

A `stepstone worker` subprocess runs the instances, as it would beside the CLI in real use; the CLI itself runs
through click's runner on the real entry point.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import stepstone
from stepstone.cli import cli

WORKFLOW = """
from stepstone import NonRetryableError, WorkflowEntrypoint


class Demo(WorkflowEntrypoint):
    async def run(self, event, step):
        p = event.payload
        a = await step.do("first", lambda: p.get("n", 1) * 2)
        if p.get("fail"):
            def boom():
                raise NonRetryableError("no way", "Refused")
            await step.do("boom", boom)
        if p.get("retry"):
            def flaky(ctx):
                if ctx.attempt == 1:
                    raise ConnectionError("try later")
                return "ok"
            await step.do("flaky", {"retries": {"limit": 1, "delay": "1 minute"}}, flaky)
        await step.sleep("nap", p.get("nap", 10))
        if p.get("wait"):
            ev = await step.wait_for_event("approval", "approval", timeout="1 minute")
            a += ev.payload["add"]
        await step.do("last", lambda: self.env.SUFFIX)
        return {"a": a, "suffix": self.env.SUFFIX}
"""

CONFIG = """
name = "demo"
main = "main.py"

[vars]
SUFFIX = "!"

[[workflows]]
name = "demo"
binding = "DEMO"
class_name = "Demo"
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project directory with a worker process running it."""
    root = tmp_path_factory.mktemp("project")
    (root / "stepstone.toml").write_text(CONFIG)
    (root / "main.py").write_text(WORKFLOW)
    log = (root / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepstone.cli", "worker", "--poll-interval", "0.05"],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield root
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)
    return project


def sc(*args: str) -> Result:
    """Run `stepstone ARGS` through the real entry point."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ok(*args: str) -> str:
    result = sc(*args)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.stdout


def js(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


def wait_status(instance: str, *statuses: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = js("workflows", "instances", "describe", "demo", instance)
        if doc["status"] in statuses:
            return doc  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"{instance} is {doc['status']}, wanted {statuses}"
        time.sleep(0.05)


def test_help_lists_every_command() -> None:
    out = ok("--help")
    for command in ("init", "dev", "worker", "workflows"):
        assert command in out
    out = ok("workflows", "instances", "--help")
    for verb in ("list", "describe", "pause", "resume", "terminate", "restart", "send-event", "delete"):
        assert verb in out


def test_trigger_wait_list_and_describe_latest(in_project: Path) -> None:
    out = ok("workflows", "trigger", "demo", '{"n": 4}', "--id", "t1")
    assert out.strip() == '🚀 Workflow instance "t1" has been queued successfully'
    doc = wait_status("t1", "complete")
    assert doc["output"] == {"a": 8, "suffix": "!"}
    assert doc["trigger"] == {"source": "api"}
    assert [s["name"] for s in doc["steps"]] == ["first-1", "nap-1", "last-1"]

    listed = js("workflows", "instances", "list", "demo")
    assert {"id": "t1", "status": "complete"}.items() <= next(i for i in listed if i["id"] == "t1").items()
    workflows = js("workflows", "list")
    assert [w["name"] for w in workflows] == ["demo"]
    assert workflows[0]["class_name"] == "Demo"

    text = sc("workflows", "instances", "describe", "demo")  # the id defaults to latest
    assert text.exit_code == 0
    assert "Describing latest instance:" in text.stderr
    latest = js("workflows", "instances", "list", "demo")[0]["id"]
    assert f"Instance Id:           {latest}" in text.stdout
    for label in ("Workflow Name:", "Version Id:", "Status:", "Trigger:", "Queued:", "Success:", "Steps:"):
        assert label in text.stdout
    described = ok("workflows", "instances", "describe", "demo", "t1")
    assert "✅ Completed" in described and "🌎 API" in described and "✅ Yes" in described
    assert "🎯 Step" in described and "💤 Sleeping" in described
    assert "Last Successful Step:  last-1" in described
    assert 'Output:    {"a": 8, "suffix": "!"}' not in described  # step outputs are per step
    assert 'Output:    "!"' in described

    table = sc("workflows", "instances", "list", "demo")
    assert "Showing" in table.stderr and "│ t1 " in table.stdout and "✅ Completed" in table.stdout


def test_trigger_wait_follows_and_exits_non_zero_on_error(in_project: Path) -> None:
    good = sc("workflows", "trigger", "demo", '{"n": 1}', "--id", "w-ok", "--wait", "--poll", "0.05")
    assert good.exit_code == 0, good.stderr
    assert '✅ step "first" completed in' in good.stderr and "✅ Completed" in good.stderr
    assert "⏳ queued" in good.stderr and "▶ running" in good.stderr
    assert json.loads(good.stdout) == {"a": 2, "suffix": "!"}

    bad = sc("workflows", "trigger", "demo", '{"fail": true}', "--id", "w-bad", "--wait")
    assert bad.exit_code == 1
    assert '❌ step "boom" attempt 1 failed in' in bad.stderr and ": Refused: no way" in bad.stderr
    assert "Error: Refused: no way" in bad.stderr

    as_json = sc("workflows", "trigger", "demo", "--id", "w-json", "--wait", "--json", "--poll", "0.05")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["status"] == "complete"


def test_watch_and_describe_show_the_traceback(in_project: Path) -> None:
    assert ok("workflows", "trigger", "demo", '{"fail": true}', "--id", "w-tb")
    watched = sc("workflows", "instances", "watch", "demo", "w-tb")
    assert watched.exit_code == 1
    assert '❌ step "boom" attempt 1 failed in' in watched.stderr and "❌ Errored" in watched.stderr
    assert "Error: Refused: no way" in watched.stderr
    assert "Traceback (most recent call last):" in watched.stderr
    assert 'raise NonRetryableError("no way", "Refused")' in watched.stderr  # the user's own line
    assert "stepstone frames hidden" in watched.stderr and "step_do.py" not in watched.stderr
    assert "\x1b[" not in watched.stderr  # piped: plain lines, no spinner
    described = ok("workflows", "instances", "describe", "demo", "w-tb")
    assert "Traceback (most recent call last):" in described and "main.py" in described
    assert 'raise NonRetryableError("no way", "Refused")' in described
    doc = js("workflows", "instances", "describe", "demo", "w-tb")
    boom = next(s for s in doc["steps"] if s["name"] == "boom-1")
    assert "main.py" in boom["attempts"][0]["error"]["traceback"]
    assert "main.py" in doc["error"]["traceback"]


def test_pause_resume_terminate_restart(in_project: Path) -> None:
    ok("workflows", "trigger", "demo", '{"nap": 1500}', "--id", "life")
    wait_status("life", "waiting")
    assert ok("workflows", "instances", "pause", "demo", "life").strip() == (
        '⏸️ The instance "life" from demo was paused successfully'
    )
    assert wait_status("life", "paused")["status"] == "paused"
    assert "resumed successfully" in ok("workflows", "instances", "resume", "demo", "life")
    assert wait_status("life", "complete")["output"]["a"] == 2

    ok("workflows", "trigger", "demo", '{"nap": 60000}', "--id", "stop")
    wait_status("stop", "waiting")
    out = ok("workflows", "instances", "terminate", "demo", "stop")
    assert out.strip() == '🥷 The instance "stop" from demo was terminated successfully'
    doc = wait_status("stop", "terminated")
    assert doc["steps"][-1]["type"] == "termination"
    assert "🚫 Termination" in ok("workflows", "instances", "describe", "demo", "stop")

    again = sc("workflows", "instances", "terminate", "demo", "stop")
    assert again.exit_code == 1 and again.stderr.count("\n") == 1 and "Traceback" not in again.stderr

    restarted = js("workflows", "instances", "restart", "demo", "life", "--from-step-name", "last")
    assert restarted["action"] == "restart"
    assert wait_status("life", "complete")["output"]["a"] == 2
    assert "restarted successfully" in ok("workflows", "instances", "restart", "demo", "latest")


def test_send_event(in_project: Path) -> None:
    ok("workflows", "trigger", "demo", '{"wait": true}', "--id", "ev")
    deadline = time.monotonic() + 10
    while (js("workflows", "instances", "describe", "demo", "ev").get("waiting_for") or {}).get(
        "kind"
    ) != "waitForEvent":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    waiting = ok("workflows", "instances", "describe", "demo", "ev")
    assert 'Waiting For:           👀 event "approval" for step "approval-1" until' in waiting
    out = ok("workflows", "instances", "send-event", "demo", "ev", "--type", "approval", "--payload", '{"add": 5}')
    assert out.strip() == (
        '📤 The event with type "approval" and payload "{"add": 5}" was sent to the instance "ev" from demo'
    )
    assert wait_status("ev", "complete")["output"]["a"] == 7


def test_delete_instances(in_project: Path) -> None:
    ok("workflows", "trigger", "demo", "--id", "del-1")
    ok("workflows", "trigger", "demo", "--id", "del-2")
    out = ok("workflows", "instances", "delete", "demo", "del-1", "del-2")
    assert out.strip() == '🗑️  Deleted workflow instances from "demo": "del-1", "del-2"'
    missing = sc("workflows", "instances", "delete", "demo", "del-1")
    assert missing.exit_code == 1 and "Failed to delete 1 workflow instance(s)" in missing.stderr


def test_workflow_describe(in_project: Path) -> None:
    out = ok("workflows", "describe", "demo")
    assert "Name:" in out and "Class Name:   Demo" in out and "Latest Version:" in out
    doc = js("workflows", "describe", "demo")
    assert doc["name"] == "demo" and set(doc["instances"]) >= {"complete", "queued", "waiting"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["workflows", "trigger", "demo", "{nope"], 2, 'Error while parsing instance parameters: "{nope"'),
        (["workflows", "instances", "list", "demo", "--status", "done"], 2, 'invalid status "done"'),
        (["workflows", "instances", "restart", "demo", "x", "--from-step-count", "2"], 2, "need --from-step-name"),
        (["workflows", "instances", "send-event", "demo", "x"], 2, "Missing option '--type'"),
        (["workflows", "instances", "list", "demo", "--page", "0"], 2, "--page"),
        (["workflows", "bogus"], 2, "No such command 'bogus'"),
        (["workflows", "instances", "describe", "nope", "x"], 1, 'workflow "nope" not found'),
        (["workflows", "instances", "pause", "demo", "no-such-id"], 1, "'no-such-id' not found"),
        (["workflows", "trigger", "demo", "--id", "bad id!"], 1, "instance id"),
    ],
)
def test_mistakes_are_one_line_errors(in_project: Path, args: list[str], code: int, message: str) -> None:
    result = sc(*args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stderr.startswith("✘ [ERROR] ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_latest_without_instances_and_empty_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "stepstone.toml").write_text(CONFIG)
    (tmp_path / "main.py").write_text(WORKFLOW)
    monkeypatch.chdir(tmp_path)
    result = sc("workflows", "instances", "describe", "demo", "latest")
    assert result.exit_code == 1 and 'There are no deployed instances in workflow "demo"' in result.stderr
    empty = sc("workflows", "instances", "list", "demo")
    assert empty.exit_code == 0 and 'There are no instances in workflow "demo"' in empty.stderr
    assert json.loads(ok("workflows", "instances", "list", "demo", "--json")) == []


def test_paging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "stepstone.toml").write_text(CONFIG)
    (tmp_path / "main.py").write_text(WORKFLOW)
    monkeypatch.chdir(tmp_path)
    for i in range(5):
        ok("workflows", "trigger", "demo", "--id", f"p{i}")
        time.sleep(0.002)
    page2 = js("workflows", "instances", "list", "demo", "--per-page", "2", "--page", "2")
    assert [i["id"] for i in page2] == ["p2", "p1"]
    oldest = js("workflows", "instances", "list", "demo", "--per-page", "2", "--reverse")
    assert [i["id"] for i in oldest] == ["p0", "p1"]
    queued = js("workflows", "instances", "list", "demo", "--status", "queued")
    assert len(queued) == 5
    past = sc("workflows", "instances", "list", "demo", "--page", "9")
    assert "No instances found on page 9" in past.stderr


def test_no_project_is_an_error_naming_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)
    result = sc("workflows", "list")
    assert result.exit_code == 1
    assert "no stepstone.toml, wrangler.toml or wrangler.jsonc" in result.stderr and "stepstone init" in result.stderr
    # With a database and no project, the database's workflows are still listed.
    monkeypatch.setenv("STEPSTONE_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert sc("workflows", "list").exit_code == 0


def test_broken_config_names_file_key_and_expectation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "main.py").write_text(WORKFLOW)
    (tmp_path / "stepstone.toml").write_text(CONFIG.replace('binding = "DEMO"', "binding = 3"))
    result = sc("workflows", "list")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "✘ [ERROR] stepstone.toml: workflows[0].binding: expected a non-empty string, got 3"
    )
    (tmp_path / "stepstone.toml").write_text(CONFIG + "\n[stepstone]\nconcurrency = 0\n")
    result = sc("workflows", "list")
    assert "stepstone.toml: stepstone.concurrency: expected an integer >= 1, got 0" in result.stderr
    (tmp_path / "stepstone.toml").write_text("name = [")
    result = sc("workflows", "list")
    assert result.exit_code == 1 and "stepstone.toml: invalid TOML" in result.stderr
    (tmp_path / "stepstone.toml").write_text(CONFIG.replace('class_name = "Demo"', 'class_name = "Missing"'))
    result = sc("workflows", "trigger", "demo")
    assert result.exit_code == 1
    assert "class_name 'Missing' of workflow 'demo' is not defined in main.py" in result.stderr


def test_init_makes_a_project_whose_test_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = ok("init", "starter")
    assert 'Created project "starter"' in out and "stepstone dev" in out
    root = tmp_path / "starter"
    for rel in ("stepstone.toml", "src/entry.py", "tests/test_workflow.py", "README.md", ".gitignore"):
        assert (root / rel).is_file(), rel
    again = sc("init", "starter")
    assert again.exit_code == 2 and "already a project" in again.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPSTONE_")}
    env["PYTHONPATH"] = str(Path(stepstone.__file__).resolve().parent.parent)  # this checkout's stepstone
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "stepstone.pytest_plugin", "tests"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    monkeypatch.chdir(root)
    assert js("workflows", "trigger", "starter-workflow", '{"email": "a@b.c"}', "--id", "s1")["id"] == "s1"
    assert [w["name"] for w in js("workflows", "list")] == ["starter-workflow"]


def test_schedules_show_in_workflow_describe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "stepstone.toml").write_text(CONFIG + 'schedules = ["0 3 * * *"]\n')
    (tmp_path / "main.py").write_text(WORKFLOW)
    monkeypatch.chdir(tmp_path)
    doc = js("workflows", "describe", "demo")
    assert doc["schedules"][0]["cron"] == "0 3 * * *"
    assert doc["schedules"][0]["next_instance"].endswith("T03:00:00.000Z")
    assert "Schedules:" in ok("workflows", "describe", "demo")


def test_local_flag_targets_a_server_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = sc("workflows", "list", "--local", "--port", str(port))  # nothing listens there
    assert result.exit_code == 1 and f"cannot reach http://127.0.0.1:{port}/client/v4" in result.stderr


def test_describe_shows_the_next_retry(in_project: Path) -> None:
    ok("workflows", "trigger", "demo", '{"retry": true}', "--id", "retrying")
    deadline = time.monotonic() + 10
    while True:
        doc = js("workflows", "instances", "describe", "demo", "retrying")
        if any(s.get("retries_at") for s in doc["steps"]):
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)
    text = ok("workflows", "instances", "describe", "demo", "retrying")
    assert "Retries At:" in text and "│ ❌ Error " in text and "│ ConnectionError: try later │" in text
    assert 'Waiting For:           🔁 next retry of step "flaky-1" until' in text
    ok("workflows", "instances", "terminate", "demo", "retrying")
