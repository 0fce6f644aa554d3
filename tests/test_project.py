"""Project files (stepstone.toml, wrangler.toml, wrangler.jsonc), environment overrides, the main module, cron."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stepstone.config import ConfigError, apply_env, load_config, strip_jsonc
from stepstone.cron import CronError, cron_instance_id, parse_cron
from stepstone.limits import ID_PATTERN
from stepstone.project import Project, ProjectError, fire_schedules, run_schedules, schedules_of
from stepstone.testing import wait_for_status

MAIN = """
from stepstone import WorkflowEntrypoint

class Hello(WorkflowEntrypoint):
    async def run(self, event, step):
        other = self.env.OTHER
        return {"greeting": self.env.GREETING, "schedule": event.schedule, "other": other.name}
"""


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text)
    (root / "main.py").write_text(MAIN)
    return path


TOML = """
name = "p"
main = "main.py"
compatibility_date = "2025-01-01"
account_id = "ignored"

[vars]
GREETING = "hi"

[[workflows]]
name = "hello"
binding = "HELLO"
class_name = "Hello"
limits = { steps = 50 }
schedules = ["*/5 * * * *", "0 9 * * MON-FRI"]

[[workflows]]
name = "other"
binding = "OTHER"
class_name = "Elsewhere"
script_name = "another-project"

[stepstone]
database = "sqlite:///data/app.db"
concurrency = 7
port = 9999
retention = { success = "1 day", error = "3 days" }
api_tokens = [{ token = "s3cret", accounts = ["acme"] }, { token_sha256 = "%s" }]
""" % ("ab" * 32)


def test_stepstone_toml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "stepstone.toml", TOML), environ={})
    assert config.name == "p" and config.main == tmp_path / "main.py"
    assert config.vars == {"GREETING": "hi"}
    hello, other = config.workflows
    assert (hello.name, hello.binding, hello.class_name, hello.steps) == ("hello", "HELLO", "Hello", 50)
    assert hello.schedules == ("*/5 * * * *", "0 9 * * MON-FRI")
    assert other.script_name == "another-project"
    s = config.settings
    assert s.database == f"sqlite:///{tmp_path / 'data' / 'app.db'}"  # relative to the project
    assert (s.concurrency, s.port, s.host) == (7, 9999, "127.0.0.1")
    assert s.success_retention_ms == 86_400_000 and s.error_retention_ms == 3 * 86_400_000
    assert s.api_tokens == (
        {"token": "s3cret", "token_sha256": None, "accounts": ("acme",)},
        {"token": None, "token_sha256": "ab" * 32, "accounts": ("*",)},
    )
    assert config.warnings == ("stepstone.toml: ignoring key(s) stepstone does not use: account_id",)


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "STEPSTONE_DATABASE_URL": "postgresql://u@h/db",
        "STEPSTONE_CONCURRENCY": "3",
        "STEPSTONE_HOST": "0.0.0.0",
        "STEPSTONE_PORT": "1234",
        "STEPSTONE_API_TOKEN": "tok",
    }
    s = load_config(write(tmp_path, "stepstone.toml", TOML), environ=env).settings
    assert (s.database, s.concurrency, s.host, s.port) == ("postgresql://u@h/db", 3, "0.0.0.0", 1234)
    assert s.api_tokens[-1] == {"token": "tok", "token_sha256": None, "accounts": ("*",)}
    with pytest.raises(ConfigError, match="STEPSTONE_PORT: expected an integer from 0 to 65535, got 'x'"):
        apply_env(s, {"STEPSTONE_PORT": "x"})


def test_wrangler_jsonc_with_comments_and_trailing_commas(tmp_path: Path) -> None:
    text = """{
      // a comment
      "name": "p", /* another */
      "main": "main.py",
      "vars": {"URL": "http://x//y"},
      "workflows": [
        {"name": "hello", "binding": "HELLO", "class_name": "Hello", "schedules": "@daily",},
      ],
      "routes": [],
    }"""
    config = load_config(write(tmp_path, "wrangler.jsonc", text), environ={})
    assert config.vars == {"URL": "http://x//y"}  # // inside a string is not a comment
    assert config.workflows[0].schedules == ("@daily",)
    assert config.warnings == ("wrangler.jsonc: ignoring key(s) stepstone does not use: routes",)
    assert strip_jsonc('{"a": "/* x */", "b": [1,],}') == '{"a": "/* x */", "b": [1]}'


def test_wrangler_toml_with_a_typescript_main_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "wrangler.toml", 'name = "w"\nmain = "src/index.ts"\n')
    with pytest.raises(ConfigError, match=r"wrangler.toml: main: expected a Python file \(.py\), got 'src/index.ts'"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('name = "hello"', 'name = "bad name"'), "workflows[0].name: expected 1-64 letters"),
        (("limits = { steps = 50 }", "limits = { steps = 30000 }"), "workflows[0].limits.steps: expected an integer"),
        (('"0 9 * * MON-FRI"', '"61 * * * *"'), "workflows[0].schedules[1]: expected a 5-field cron"),
        (('success = "1 day"', 'success = "soon"'), "stepstone.retention.success: expected a duration"),
        (('{ token = "s3cret", accounts = ["acme"] }', "{ accounts = [] }"), "exactly one of token or token_sha256"),
        (('binding = "OTHER"', 'binding = "HELLO"'), "workflows[1].binding: expected a value not used"),
        (("concurrency = 7", 'concurrency = "many"'), "stepstone.concurrency: expected an integer >= 1, got 'many'"),
    ],
)
def test_invalid_values_name_file_key_and_expectation(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    assert change[0] in TOML
    path = write(tmp_path, "stepstone.toml", TOML.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith("stepstone.toml: ")
    assert message in str(info.value)


def test_missing_main_and_missing_class(tmp_path: Path) -> None:
    path = write(tmp_path, "stepstone.toml", TOML.replace('main = "main.py"', 'main = "nope.py"'))
    with pytest.raises(ConfigError, match="main: expected an existing file"):
        load_config(path, environ={})
    path = write(tmp_path, "stepstone.toml", TOML.replace('class_name = "Hello"', 'class_name = "Nope"'))
    with pytest.raises(ProjectError, match=r"class_name 'Nope' of workflow 'hello' is not defined in main\.py"):
        Project.load(path).classes()
    (tmp_path / "main.py").write_text("raise RuntimeError('broken on import')\n")
    path.write_text(TOML)
    with pytest.raises(ProjectError, match=r"main\.py: import failed: RuntimeError: broken on import"):
        Project.load(path).classes()


async def test_engine_has_bindings_vars_and_runs_a_cron_firing_once(tmp_path: Path) -> None:
    path = write(tmp_path, "stepstone.toml", TOML.replace("sqlite:///data/app.db", "sqlite:///app.db"))
    project = Project.load(path)
    assert project.module() is project.module()  # imported once
    engine = project.engine(worker=True, poll_interval=0.05)
    other = project.engine(worker=False)  # a second process firing the same schedules
    async with engine, other:
        assert engine.env.GREETING == "hi" and engine.env.HELLO.name == "hello" and engine.env.OTHER.name == "other"
        assert engine.limits.success_retention_ms == 86_400_000
        assert engine.definitions["hello"].limits.steps == 50
        when = datetime(2026, 11, 23, 9, 0, 30, tzinfo=UTC)  # a Monday, 09:00: both schedules fire
        first = await fire_schedules(engine, schedules_of(project.config), when)
        second = await fire_schedules(other, schedules_of(project.config), when)
        assert first == ["x-5_x_x_x_x-1795424400000".replace("x-5", "xq5"), "0_9_x_x_MON-FRI-1795424400000"]
        assert second == []  # never twice for one firing
        instance = await engine.env.HELLO.get(first[0])
        status = await wait_for_status(instance, "complete")
        assert status.output == {
            "greeting": "hi",
            "schedule": {"cron": "*/5 * * * *", "scheduled_time": 1795424400000},
            "other": "other",
        }
        assert (await instance.describe())["trigger"] == {"source": "cron"}
        assert (
            await fire_schedules(engine, schedules_of(project.config), datetime(2026, 11, 23, 9, 1, tzinfo=UTC)) == []
        )
    await asyncio.sleep(0)


def test_cron_fields() -> None:
    c = parse_cron("*/15 9-17 * JAN,jul mon-fri")
    assert c.matches(datetime(2026, 1, 5, 9, 45, tzinfo=UTC))  # Monday
    assert not c.matches(datetime(2026, 1, 4, 9, 45, tzinfo=UTC))  # Sunday
    assert not c.matches(datetime(2026, 2, 2, 9, 45, tzinfo=UTC))  # February
    assert not c.matches(datetime(2026, 1, 5, 18, 0, tzinfo=UTC))
    sunday = parse_cron("0 0 * * 7")
    assert sunday.matches(datetime(2026, 1, 4, 0, 0, tzinfo=UTC))
    either = parse_cron("0 0 13 * 5")  # the 13th or any Friday (Vixie cron's rule)
    assert either.matches(datetime(2026, 1, 13, tzinfo=UTC)) and either.matches(datetime(2026, 1, 2, tzinfo=UTC))
    assert parse_cron("30 4 1-10/3 * *").days == frozenset({1, 4, 7, 10})
    assert parse_cron("@hourly").next_after(datetime(2026, 1, 1, 10, 0, tzinfo=UTC)) == datetime(
        2026, 1, 1, 11, 0, tzinfo=UTC
    )
    assert parse_cron("0 0 29 2 *").next_after(datetime(2026, 3, 1, tzinfo=UTC)) == datetime(2028, 2, 29, tzinfo=UTC)
    assert parse_cron("0 0 30 2 *").next_after(datetime(2026, 3, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "has 4 field(s), expected 5"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("* * * FOO *", "month 'FOO' is not a number or a name"),
        ("*/0 * * * *", "step '0' must be a positive integer"),
        ("5-1 * * * *", "goes backwards"),
    ],
)
def test_cron_errors(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_cron(expr)


def test_cron_ids_fit_the_instance_id_pattern() -> None:
    assert cron_instance_id("*/30 * * * *", 1786001400000) == "xq30_x_x_x_x-1786001400000"
    assert cron_instance_id("0 0 1,15 * *", 1) != cron_instance_id("0 0 1-15 * *", 1)
    long = cron_instance_id("0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26 * * * *", 1)
    assert len(long) <= 100
    for cid in ("*/30 * * * *", "@daily", "0 9 * * MON-FRI"):
        assert ID_PATTERN.match(cron_instance_id(cid, 1786001400000))


async def test_run_schedules_fires_at_each_minute_on_the_engine_clock(tmp_path: Path) -> None:
    from stepstone.testing import FAKE_CLOCK_ENGINE_OPTIONS, FakeClock

    path = write(tmp_path, "stepstone.toml", TOML.replace("sqlite:///data/app.db", "sqlite:///app.db"))
    project = Project.load(path)
    clock = FakeClock(start=1_795_424_370.0, autojump=True)  # 2026-11-23 08:59:30 UTC, a Monday
    fired: list[tuple[str, str]] = []
    async with project.engine(worker=False, clock=clock, **FAKE_CLOCK_ENGINE_OPTIONS) as engine:
        task = asyncio.create_task(
            run_schedules(engine, lambda: schedules_of(project.config), on_fire=lambda w, i: fired.append((w, i)))
        )
        while len(fired) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert fired == [("hello", "xq5_x_x_x_x-1795424400000"), ("hello", "0_9_x_x_MON-FRI-1795424400000")]
