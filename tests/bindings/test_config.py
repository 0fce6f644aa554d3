"""Wrangler's binding keys in stepstone.toml / wrangler.toml / wrangler.jsonc, checked with the key named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stepstone.bindings.config import QueueConsumerConfig, QueueProducerConfig
from stepstone.bindings.d1 import D1Database
from stepstone.bindings.errors import BindingNotConfiguredError
from stepstone.bindings.kv import KVNamespace
from stepstone.cli import cli
from stepstone.config import ConfigError, load_config
from stepstone.project import Project

WRANGLER = """
name = "app"
main = "worker.py"

[[kv_namespaces]]
binding = "USERS"
id = "0f2ac74b498b48028cb68387c421e279"

[[d1_databases]]
binding = "DB"
database_name = "app-db"
database_id = "xxxx-yyyy"

[[r2_buckets]]
binding = "BUCKET"
bucket_name = "images"

[[queues.producers]]
binding = "JOBS"
queue = "jobs"

[[queues.consumers]]
queue = "jobs"
max_batch_size = 5
max_batch_timeout = 0
max_retries = 2
dead_letter_queue = "jobs-dlq"

[ai]
binding = "AI"
"""


def write(tmp_path: Path, text: str, name: str = "wrangler.toml") -> Path:
    (tmp_path / "worker.py").write_text("")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_wrangler_keys_parse(tmp_path: Path) -> None:
    b = load_config(write(tmp_path, WRANGLER), environ={}).bindings
    assert [(k.binding, k.id) for k in b.kv] == [("USERS", "0f2ac74b498b48028cb68387c421e279")]
    assert [(d.binding, d.database_name, d.database_id) for d in b.d1] == [("DB", "app-db", "xxxx-yyyy")]
    assert [(r.binding, r.bucket_name) for r in b.r2] == [("BUCKET", "images")]
    assert b.producers == (QueueProducerConfig("JOBS", "jobs"),)
    assert b.consumers == (QueueConsumerConfig("jobs", 5, 0.0, 2, "jobs-dlq"),)
    assert [(c.binding, c.kind, c.implementation) for c in b.custom] == [("AI", "ai", "")]


def test_jsonc_works_too(tmp_path: Path) -> None:
    doc = {
        "name": "app",
        "main": "worker.py",
        "kv_namespaces": [{"binding": "KV", "id": "abc"}],
        "queues": {"consumers": [{"queue": "q"}]},
    }
    path = write(tmp_path, "// comment\n" + json.dumps(doc), "wrangler.jsonc")
    b = load_config(path, environ={}).bindings
    assert b.kv[0].binding == "KV" and b.consumers == (QueueConsumerConfig("q"),)  # Cloudflare's defaults


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[[kv_namespaces]]\nbinding = "1x"\n', "kv_namespaces[0].binding: expected a Python identifier, got '1x'"),
        ("[[kv_namespaces]]\nid = 'a'\n", "kv_namespaces[0].binding: expected a non-empty string, got None"),
        ('[[r2_buckets]]\nbinding = "B"\nbucket_name = "Bad_Name"\n', "r2_buckets[0].bucket_name: expected a bucket"),
        (
            '[[queues.consumers]]\nqueue = "q"\nmax_batch_size = 101\n',
            "queues.consumers[0].max_batch_size: expected an integer from 1 to 100, got 101",
        ),
        (
            '[[queues.consumers]]\nqueue = "q"\nmax_batch_timeout = 61\n',
            "queues.consumers[0].max_batch_timeout: expected a number of seconds from 0 to 60, got 61",
        ),
        (
            '[[queues.consumers]]\nqueue = "q"\ndead_letter_queue = "q"\n',
            "queues.consumers[0].dead_letter_queue: expected a queue other than the one consumed",
        ),
        ('[[queues.producers]]\nbinding = "Q"\n', "queues.producers[0].queue: expected a non-empty string, got None"),
        (
            '[[kv_namespaces]]\nbinding = "X"\n[[d1_databases]]\nbinding = "X"\n',
            "bindings: expected binding names used once, got 'X'",
        ),
        ('[ai]\nbinding = "AI"\nimplementation = "nocolon"\n', 'ai.implementation: expected "module:Class"'),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    path = write(tmp_path, 'name = "app"\nmain = "worker.py"\n' + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert f"wrangler.toml: {message}" in str(caught.value)


async def test_project_env_has_the_bindings_and_ai_says_how_to_configure(tmp_path: Path) -> None:
    path = write(tmp_path, WRANGLER)
    engine = Project.load(path).engine(worker=False, database=f"sqlite:///{tmp_path / 'db.sqlite'}")
    async with engine:
        env = engine.env
        assert isinstance(env.USERS, KVNamespace) and isinstance(env.DB, D1Database)
        await env.USERS.put("u:1", '{"name": "Ada"}')
        assert (await env.USERS.get("u:1", type="json")).name == "Ada"
        await env.DB.exec("CREATE TABLE t (x)")
        assert (tmp_path / ".stepstone" / "d1" / "app-db.sqlite3").is_file()
        with pytest.raises(BindingNotConfiguredError, match=r'implementation = "my_ai:MyAI"'):
            await env.AI.run("@cf/meta/llama", {"prompt": "hi"})


async def test_an_ai_implementation_named_in_the_file_is_used(tmp_path: Path) -> None:
    (tmp_path / "echo_ai.py").write_text(
        "class EchoAI:\n    def __init__(self, options):\n        self.options = options\n"
        "    async def run(self, model, inputs, options=None):\n        return {'model': model, 'echo': inputs}\n"
    )
    text = 'name = "app"\nmain = "worker.py"\n[ai]\nbinding = "AI"\nimplementation = "echo_ai:EchoAI"\n'
    engine = Project.load(write(tmp_path, text)).engine(worker=False, database=f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert await engine.env.AI.run("m", {"x": 1}) == {"model": "m", "echo": {"x": 1}}


def test_d1_execute_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, WRANGLER)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    made = runner.invoke(cli, ["d1", "execute", "app-db", "--command", "CREATE TABLE t (x); INSERT INTO t VALUES (7)"])
    assert made.exit_code == 0, made.output
    (tmp_path / "q.sql").write_text("SELECT x FROM t;\n")
    out = runner.invoke(cli, ["d1", "execute", "DB", "--file", "q.sql", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)[0]["results"] == [{"x": 7}]
    shown = runner.invoke(cli, ["d1", "execute", "DB", "--command", "SELECT x FROM t"])
    assert "│ 7 │" in shown.stdout
    bad = runner.invoke(cli, ["d1", "execute", "DB", "--command", "SELECT * FROM nope"])
    assert bad.exit_code == 1 and "D1_ERROR: no such table: nope: SQLITE_ERROR" in bad.stderr
    unknown = runner.invoke(cli, ["d1", "execute", "other", "--command", "SELECT 1"])
    assert unknown.exit_code == 1 and "no [[d1_databases]] entry named 'other'" in unknown.stderr
