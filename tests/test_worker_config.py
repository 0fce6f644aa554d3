"""The Worker's keys of a Wrangler file: ``[triggers] crons``, and ``[vars]`` with the local secrets (``.dev.vars``,
else ``.env``/``.env.local``; ``secrets.required`` from the environment) reaching ``env``."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepstone.config import ConfigError, load_config
from stepstone.pytest_plugin import open_project

BASE = 'name = "w"\nmain = "entry.py"\n'


def project(root: Path, extra: str = "", files: dict[str, str] | None = None) -> Path:
    (root / "entry.py").write_text(
        "from workers import WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n    pass\n"
    )
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    path = root / "wrangler.toml"
    path.write_text(BASE + extra)
    return path


def test_triggers_crons_are_read_and_checked(tmp_path: Path) -> None:
    config = load_config(project(tmp_path, '[triggers]\ncrons = ["*/5 * * * *", "0 9 * * MON-FRI"]\n'))
    assert config.crons == ("*/5 * * * *", "0 9 * * MON-FRI")
    with pytest.raises(ConfigError, match=r"wrangler.toml: triggers.crons\[1\]: expected a 5-field cron expression"):
        load_config(project(tmp_path, '[triggers]\ncrons = ["* * * * *", "61 * * * *"]\n'))
    with pytest.raises(ConfigError, match=r"triggers.cron: expected only the key crons"):
        load_config(project(tmp_path, '[triggers]\ncron = ["* * * * *"]\n'))
    with pytest.raises(ConfigError, match=r"triggers.crons: expected a list of cron strings"):
        load_config(project(tmp_path, '[triggers]\ncrons = "* * * * *"\n'))


def test_dev_vars_win_over_vars_and_exclude_dot_env(tmp_path: Path) -> None:
    path = project(
        tmp_path,
        '[vars]\nAPI_HOST = "example.com"\nMODE = "prod"\n',
        {".dev.vars": 'MODE="dev"\nSECRET_KEY="s3"\n', ".env": "IGNORED=1\n"},
    )
    config = load_config(path)
    assert config.secrets == {"MODE": "dev", "SECRET_KEY": "s3"} and config.secrets_from == (".dev.vars",)


def test_dot_env_and_dot_env_local_without_dev_vars(tmp_path: Path) -> None:
    config = load_config(project(tmp_path, files={".env": "A=1\nB=2\n", ".env.local": "B=3\n"}))
    assert config.secrets == {"A": "1", "B": "3"} and config.secrets_from == (".env", ".env.local")


def test_secrets_required_keeps_those_and_reads_the_environment(tmp_path: Path) -> None:
    path = project(
        tmp_path, '[secrets]\nrequired = ["API_KEY", "DB_PASS", "MISSING"]\n', {".dev.vars": "API_KEY=k\nX=1\n"}
    )
    config = load_config(path, environ={"DB_PASS": "from-env", "OTHER": "no"})
    assert config.secrets == {"API_KEY": "k", "DB_PASS": "from-env"}
    assert config.secrets_from == (".dev.vars", "environment")
    assert config.warnings == (
        "wrangler.toml: secrets.required: MISSING is in no .dev.vars and not in the environment",
    )
    with pytest.raises(ConfigError, match=r"secrets.required: expected a list of variable names"):
        load_config(project(tmp_path, '[secrets]\nrequired = "API_KEY"\n'))


async def test_vars_and_secrets_reach_env_and_clashes_are_named(tmp_path: Path, db_url: str) -> None:
    path = project(tmp_path, '[vars]\nGREETING = "hi"\nMODE = "prod"\n', {".dev.vars": "MODE=dev\nTOKEN=t\n"})
    async with open_project(path, db_url) as loaded:
        assert (loaded.env.GREETING, loaded.env.MODE, loaded.env.TOKEN) == ("hi", "dev", "t")
        loaded.project.module()
        import workers  # type: ignore[import-not-found]

        assert workers.env is loaded.env
    clash = (
        '[vars]\nMY_WORKFLOW = "x"\n[[workflows]]\nname = "wf"\nbinding = "MY_WORKFLOW"\nclass_name = "Wf"\n'
        'script_name = "elsewhere"\n'
    )
    with pytest.raises(ConfigError, match=r"vars.MY_WORKFLOW: the name is already the binding of workflow 'wf'"):
        async with open_project(project(tmp_path, clash), db_url):
            pass
