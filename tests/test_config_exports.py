"""Workflows declared in the ``exports`` of the Wrangler configuration (Cloudflare's changelog 2026-09-24 and
2026-09-27): ``[exports.ClassName]`` with ``type = "workflow"`` beside ``[[workflows]]``, in stepstone.toml,
wrangler.toml and wrangler.jsonc; Cloudflare's rules for a workflow declared both ways; errors naming the file and
the key; and a project run for real (``stepstone worker`` and ``stepstone serve`` processes) whose Worker creates
instances through ``ctx.exports`` and whose REST API serves them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstone.config import ConfigError, load_config
from tests.server_process import free_port

ROOT = Path(__file__).resolve().parent.parent
V4 = "/client/v4/accounts/local/workflows"

APP = """
from workers import Response, WorkerEntrypoint, WorkflowEntrypoint


class Greeter(WorkflowEntrypoint):
    async def run(self, event, step):
        return await step.do("greet", lambda: f"Hello, {event.payload.get('name', 'World')}")


class Other(WorkflowEntrypoint):
    async def run(self, event, step):
        return "other"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        instance = await self.ctx.exports.Greeter.create(params={"name": "exports"})
        return Response.json({"id": instance.id})
"""

TOML = """
name = "exports-demo"
main = "app.py"

[exports.Greeter]
type = "workflow"
name = "greeter"
schedules = ["0 * * * *"]
default_retention = {{ success_retention = "3 days", error_retention = 86400000 }}

[exports.Greeter.limits]
steps = 25_000

[exports.Counter]
type = "durable-object"
{extra}
"""

JSONC = """{
  // the changelog's example, with a binding declaring the same workflow
  "name": "exports-demo",
  "main": "app.py",
  "exports": {
    "Greeter": {
      "type": "workflow",
      "name": "greeter",
      "limits": { "steps": 25000 },
      "schedules": ["0 * * * *"],
    },
  },
  "workflows": [
    { "name": "greeter", "binding": "GREETER", "class_name": "Greeter", "concurrency": { "limit": 3 } },
    { "name": "other", "binding": "OTHER", "class_name": "Other" },
  ],
}
"""


def project(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / "app.py").write_text(APP)
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["stepstone.toml", "wrangler.toml"])
def test_a_workflow_declared_only_in_exports(tmp_path: Path, name: str) -> None:
    config = load_config(project(tmp_path, name, TOML.format(extra="")))
    (wf,) = config.workflows
    assert (wf.name, wf.class_name, wf.binding, wf.exported) == ("greeter", "Greeter", "", True)
    assert wf.steps == 25_000 and wf.schedules == ("0 * * * *",)
    assert wf.success_retention_ms == 3 * 86_400_000 and wf.error_retention_ms == 86_400_000
    assert f"{name}: exports.Counter: ignoring a durable-object export (stepstone runs workflows)" in config.warnings


def test_a_workflow_declared_as_a_binding_and_an_export_is_one_workflow(tmp_path: Path) -> None:
    config = load_config(project(tmp_path, "wrangler.jsonc", JSONC))
    greeter, other = config.workflows
    assert (greeter.name, greeter.binding, greeter.exported) == ("greeter", "GREETER", True)
    assert greeter.steps == 25_000 and greeter.schedules == ("0 * * * *",) and greeter.concurrency == 3
    assert (other.binding, other.exported) == ("OTHER", False)


BINDING = """
[[workflows]]
name = "{name}"
binding = "GREETER"
class_name = "{cls}"
{more}
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            BINDING.format(name="greeter", cls="Other", more=""),
            "workflows[0].class_name: expected 'Greeter', the class of exports.Greeter (the same workflow), "
            "got 'Other'",
        ),
        (
            BINDING.format(name="greeter", cls="Greeter", more='schedules = ["5 * * * *"]'),
            "exports.Greeter.schedules: expected the value workflows[0] gives it, ('5 * * * *',) (a workflow "
            "declared as a binding and an export cannot set one setting to different values), got ('0 * * * *',)",
        ),
        (
            BINDING.format(name="greeter", cls="Greeter", more="limits = { steps = 100 }"),
            "exports.Greeter.limits.steps: expected the value workflows[0] gives it, 100",
        ),
        (
            BINDING.format(name="greeter", cls="Greeter", more='script_name = "elsewhere"'),
            "workflows[0].name: expected a name other than the workflow exports.Greeter exports (a binding to "
            "another Worker's workflow cannot use the name of a workflow this Worker exports), got 'greeter'",
        ),
        (
            '[exports.Again]\ntype = "workflow"\nname = "greeter"',
            "exports.Again.name: expected a workflow name not used by exports.Greeter (names are unique), "
            "got 'greeter'",
        ),
        ('[exports.Bad]\ntype = "workflows"', 'exports.Bad.type: expected "durable-object" or "worker" or "workflow"'),
        ('[exports.Bad]\ntype = "workflow"', "exports.Bad.name: expected a non-empty string, got None"),
        ('[exports.Bad]\ntype = "workflow"\nname = "-x"', "exports.Bad.name: expected 1-64 letters"),
        (
            '[exports.Bad]\ntype = "workflow"\nname = "bad"\nlimits = { steps = 0 }',
            "exports.Bad.limits.steps: expected an integer from 1 to 25000, got 0",
        ),
        (
            '[exports.Bad]\ntype = "workflow"\nname = "bad"\ndefault_retention = { success = "1 day" }',
            "exports.Bad.default_retention.success: expected only success_retention and error_retention",
        ),
        (
            '[exports.Bad]\ntype = "workflow"\nname = "bad"\nschedules = ["every minute"]',
            "exports.Bad.schedules[0]: expected a 5-field cron expression",
        ),
        ('[exports."not a class"]\ntype = "workflow"\nname = "bad"', "exports.not a class: expected a class name"),
    ],
)
def test_a_bad_export_is_an_error_naming_the_file_and_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as bad:
        load_config(project(tmp_path, "wrangler.toml", TOML.format(extra=extra)))
    assert str(bad.value).startswith(f"wrangler.toml: {message}"), str(bad.value)


def test_exports_must_be_a_table_in_jsonc(tmp_path: Path) -> None:
    text = json.dumps({"name": "x", "main": "app.py", "exports": ["Greeter"]})
    with pytest.raises(ConfigError, match=r"wrangler.jsonc: exports: expected a table keyed by class name"):
        load_config(project(tmp_path, "wrangler.jsonc", text))


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("STEPSTONE_DATABASE_URL", "DATABASE_URL")}
    env["PYTHONPATH"] = str(ROOT)
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stepstone.cli", *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def wait_json(url: str, ok: Any, what: str, log: Path) -> Any:
    for _ in range(1200):
        try:
            answer = httpx.get(url, timeout=2)
            if answer.status_code == 200 and ok(answer.json()):
                return answer.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} never happened; log: {log.read_text()}")


def test_a_project_with_exports_runs_under_worker_and_serve(tmp_path: Path) -> None:
    text = TOML.format(extra='[stepstone]\ndatabase = "sqlite:///project.db"')
    project(tmp_path, "stepstone.toml", text)
    port = free_port()
    worker = start(["worker", "--no-schedules"], tmp_path, tmp_path / "worker.log")
    serve = start(["serve", "--port", str(port)], tmp_path, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_json(
            f"{base}{V4}",
            lambda body: any(w["name"] == "greeter" for w in body["result"]),
            "the worker registering the exported workflow",
            tmp_path / "worker.log",
        )
        made = httpx.post(f"{base}{V4}/greeter/instances", json={"instance_id": "rest-1", "params": {"name": "REST"}})
        assert made.status_code == 200, made.text
        fetched = httpx.get(f"{base}/")  # the Worker's fetch: ctx.exports.Greeter.create(...)
        assert fetched.status_code == 200, (fetched.text, (tmp_path / "serve.log").read_text())
        for instance_id, greeting in ((("rest-1"), "Hello, REST"), (fetched.json()["id"], "Hello, exports")):
            doc = wait_json(
                f"{base}{V4}/greeter/instances/{instance_id}",
                lambda body: body["result"]["status"] == "complete",
                f"instance {instance_id} completing",
                tmp_path / "worker.log",
            )
            assert doc["result"]["output"] == greeting
        workflow = httpx.get(f"{base}{V4}/greeter").json()["result"]
        assert workflow["class_name"] == "Greeter"
    finally:
        for proc in (serve, worker):
            proc.send_signal(signal.SIGTERM)
        for proc in (serve, worker):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
