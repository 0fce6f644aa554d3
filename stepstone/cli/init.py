"""``stepstone init [DIR]``: a starter project, like ``npm create cloudflare -- --template workflows-starter``."""

from __future__ import annotations

import re
from pathlib import Path

import click

from stepstone.cli.output import echo
from stepstone.config import CONFIG_FILES

CONFIG = """\
# stepstone reads wrangler's keys: name, main, [vars], [[workflows]] (and wrangler reads this file too:
# wrangler deploy --config stepstone.toml; the two compatibility keys are what it needs for a Python Worker).
name = "{name}"
main = "src/entry.py"
compatibility_date = "2026-05-08"
compatibility_flags = ["python_workers", "python_workflows"]

[vars]
GREETING = "Hello"

[[workflows]]
name = "{workflow}"
binding = "MY_WORKFLOW"
class_name = "MyWorkflow"
# schedules = ["*/30 * * * *"]     # cron: each firing creates an instance

# stepstone's own settings (STEPSTONE_DATABASE_URL, STEPSTONE_CONCURRENCY, ... override them).
[stepstone]
database = "sqlite:///.stepstone/stepstone.db"
concurrency = 100
port = 8787
retention = {{ success = "7 days", error = "7 days" }}
"""

ENTRY = '''\
"""The starter workflow: three steps, a durable sleep, and a wait for an approval event."""

from __future__ import annotations

from typing import Any

from stepstone import (
    NonRetryableError,
    StepContext,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
    WorkflowTimeoutError,
)


class MyWorkflow(WorkflowEntrypoint):
    """Trigger it with params like {"email": "ada@example.com"}."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        # A step's result is stored: on replay (after a sleep, a restart or a crash) it is not run again.
        files = await step.do(
            "my first step",
            lambda: {"inputParams": event.payload, "files": ["doc_7392_rev3.pdf", "report_x29_final.pdf"]},
        )

        @step.do("greet", config={"retries": {"limit": 3, "delay": "1 second", "backoff": "constant"}})
        async def greet(ctx: StepContext) -> str:
            if not isinstance(event.payload, dict):
                raise NonRetryableError("params must be a JSON object")  # fails the step at once
            if ctx.attempt == 1:
                raise ConnectionError("flaky network")  # the first attempt fails, to show a retry
            return f"{self.env.GREETING}, {event.payload.get('email', 'stranger')}!"

        greeting = await greet()

        await step.sleep("wait on something", "5 seconds")  # the instance hibernates: no process held

        try:
            approval = await step.wait_for_event("wait for approval", "approval", timeout="1 hour")
            approved = bool(approval.payload.get("approved"))
        except WorkflowTimeoutError:
            approved = False

        summary = await step.do("summarise", lambda: {"files": len(files["files"]), "approved": approved})
        return {"greeting": greeting, **summary}
'''

TEST = '''\
"""The starter workflow's tests. The ``project`` fixture (from ``stepstone[test]``) loads ../stepstone.toml as
``stepstone dev`` does, on a fresh database and a clock that skips the sleep and the retry delay: milliseconds."""

from __future__ import annotations

from stepstone.pytest_plugin import TestProject
from stepstone.testing import introspect_workflow_instance, wait_for_event_wait, wait_for_status


async def test_an_approved_request(project: TestProject) -> None:
    instance = await project.env.MY_WORKFLOW.create(params={"email": "ada@example.com"})
    await wait_for_event_wait(instance, "approval")
    await instance.send_event(type="approval", payload={"approved": True})
    status = await wait_for_status(instance, "complete")
    assert status.output == {"greeting": "Hello, ada@example.com!", "files": 2, "approved": True}


async def test_no_answer_within_the_hour(project: TestProject) -> None:
    async with introspect_workflow_instance(project.env.MY_WORKFLOW, "no-answer") as inst:
        await inst.modify(lambda m: m.force_event_timeout("wait for approval"))
        await project.env.MY_WORKFLOW.create(id="no-answer", params={"email": "bob@example.com"})
        assert (await inst.wait_for_status("complete")).output["approved"] is False
        assert await inst.wait_for_step_result("greet") == "Hello, bob@example.com!"
'''

PYPROJECT = """\
[project]
name = "{name}"
version = "0.1.0"
description = "A stepstone project: Cloudflare Workflows for Python."
requires-python = ">=3.11"
dependencies = ["stepstone"]

[project.optional-dependencies]
test = ["stepstone[test]"]  # pytest, pytest-asyncio and stepstone's fixtures (engine, project)

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
bypass-selection = true  # the workflows run under stepstone dev, from src/: nothing to package

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
testpaths = ["tests"]
"""

README = """\
# {name}

A stepstone project: Cloudflare Workflows for Python, running locally.

```bash
pip install -e '.[test]'                                   # stepstone, pytest and stepstone's test fixtures
pytest                                                     # the workflow's tests, in milliseconds
stepstone dev                                              # runs the workflows; restarts on code changes
stepstone workflows trigger {workflow} '{{"email": "ada@example.com"}}'
stepstone workflows instances describe {workflow} latest
stepstone workflows instances send-event {workflow} latest --type approval --payload '{{"approved": true}}'
stepstone workflows trigger {workflow} '{{"email": "bob@example.com"}}' --wait   # follow it live
```

`src/entry.py` holds the workflow; `stepstone.toml` binds it (wrangler's keys). The state lives in
`.stepstone/stepstone.db`. `tests/test_workflow.py` runs it on the `project` fixture: a fresh database and a
clock that skips sleeps, with Cloudflare's introspection (`introspect_workflow_instance`, `modify`) to mock steps
and events; see stepstone's docs/testing.md.
"""

GITIGNORE = ".stepstone/\n__pycache__/\n.pytest_cache/\n"


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-zA-Z0-9_-]+", "-", text).strip("-_").lower()
    return slug[:40] or "my-project"


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Project name (default: the directory's name).")
def init(directory: Path, name: str | None) -> None:
    """Create a starter project in DIRECTORY: stepstone.toml, a workflow, its test, a pyproject.toml."""
    root = directory.resolve()
    existing = [f for f in CONFIG_FILES if (root / f).exists()]
    if existing:
        raise click.UsageError(f"{root / existing[0]} already exists: {root} is already a project")
    project = _slug(name or root.name)
    workflow = f"{project}-workflow" if not project.endswith("workflow") else project
    files = {
        "stepstone.toml": CONFIG.format(name=project, workflow=workflow),
        "src/entry.py": ENTRY,
        "tests/test_workflow.py": TEST,
        "pyproject.toml": PYPROJECT.format(name=project),
        "README.md": README.format(name=project, workflow=workflow),
        ".gitignore": GITIGNORE,
    }
    for rel, text in files.items():
        path = root / rel
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    where = "" if root == Path.cwd().resolve() else f"cd {directory} && "
    echo(f'✨ Created project "{project}" in {root} with workflow "{workflow}"')
    echo("Next:")
    echo(f"  {where}pip install -e '.[test]' && pytest")
    echo("  stepstone dev")
    echo(f'  stepstone workflows trigger {workflow} \'{{"email": "ada@example.com"}}\'')
    echo(f"  stepstone workflows instances describe {workflow} latest")
