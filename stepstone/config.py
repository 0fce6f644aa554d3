"""Project configuration: ``stepstone.toml``, ``wrangler.toml`` or ``wrangler.jsonc``, plus ``STEPSTONE_*`` overrides.

This is the only module that reads the environment. It parses and checks; it imports no user code (that is
:mod:`stepstone.project`). Every error names the file, the key and what was expected::

    stepstone.toml: workflows[0].class_name: expected a non-empty string, got 3

Wrangler's keys are read as they are (``name``, ``main``, ``[vars]``, ``[[workflows]]`` with ``name``, ``binding``,
``class_name``, ``script_name``, ``limits.steps``, ``schedules``, ``default_retention``, ``concurrency.limit``, and
``[exports.ClassName]`` with ``type = "workflow"``: :mod:`stepstone.config_workflows`), and each workflow may add
``concurrency`` (at most that many of its instances run at once), ``retention = {success, error}``, ``isolation``
(``"thread"`` or ``"process"``: where its sync steps run), ``on_divergence`` (``"record"`` or ``"fail"``) and
``limits.max_queued_instances`` / ``limits.creation_rate``; our own settings sit in a ``[stepstone]`` table:
``database``, ``concurrency``, ``host``, ``port``, ``retention = {success, error}``, ``lease_seconds``,
``api_tokens``, ``log_level``, ``log_format`` and ``[stepstone.limits]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from stepstone.bindings.config import TOP_KEYS as BINDING_KEYS
from stepstone.bindings.config import BindingsConfig, parse_bindings
from stepstone.config_check import Checker as _Checker
from stepstone.config_check import ConfigError as ConfigError
from stepstone.config_worker import parse_crons, read_secrets
from stepstone.config_workflows import MAX_CPU_MS, parse_workflows
from stepstone.config_workflows import WorkflowConfig as WorkflowConfig

CONFIG_FILES: Final[tuple[str, ...]] = ("stepstone.toml", "wrangler.toml", "wrangler.jsonc", "wrangler.json")
"""The file names looked for, in this order, in the directory and then its parents."""

DEFAULT_DATABASE: Final[str] = "sqlite:///.stepstone/stepstone.db"
DEFAULT_HOST: Final[str] = "127.0.0.1"
DEFAULT_PORT: Final[int] = 8787
DEFAULT_CONCURRENCY: Final[int] = 100

ENV_DATABASE: Final[str] = "STEPSTONE_DATABASE_URL"
ENV_DATABASE_FALLBACK: Final[str] = "DATABASE_URL"
"""The common convention (Heroku, Render, Django, Rails...): used when ``STEPSTONE_DATABASE_URL`` is unset and it
holds a URL stepstone can open (``sqlite:///`` or ``postgresql://``)."""
ENV_CONCURRENCY: Final[str] = "STEPSTONE_CONCURRENCY"
ENV_HOST: Final[str] = "STEPSTONE_HOST"
ENV_PORT: Final[str] = "STEPSTONE_PORT"
ENV_API_TOKEN: Final[str] = "STEPSTONE_API_TOKEN"
ENV_LOG_LEVEL: Final[str] = "STEPSTONE_LOG_LEVEL"
ENV_BLOB_STORE: Final[str] = "STEPSTONE_BLOB_STORE"
"""Where streamed step outputs go (``s3://KEY:SECRET@bucket/prefix?endpoint=...``), over ``[stepstone] blob_store``."""
LOG_LEVELS: Final[tuple[str, ...]] = ("debug", "info", "warning", "error")
LOG_FORMATS: Final[tuple[str, ...]] = ("text", "json")
_USABLE_URLS: Final[tuple[str, ...]] = ("sqlite://", "postgresql://", "postgres://")
# Variables that name a database for other tools: libpq's, and *DATABASE_URL, POSTGRES_URL, DB_DSN and the like.
_LIBPQ_VARS: Final[frozenset[str]] = frozenset({"PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"})
_DATABASE_VAR_RE: Final = re.compile(r"(?:^|_)(?:DATABASE|DB|POSTGRES|POSTGRESQL|PG)_?(?:URL|URI|DSN)$")

# Wrangler keys that make sense for a Worker but not here: accepted silently.
_QUIET_KEYS: Final[frozenset[str]] = frozenset(
    {"$schema", "compatibility_date", "compatibility_flags", "observability"}
)
_TOP_KEYS: Final[frozenset[str]] = (
    frozenset({"name", "main", "vars", "workflows", "exports", "stepstone", "limits", "triggers", "secrets"})
    | BINDING_KEYS
)
_SETTINGS_KEYS: Final[frozenset[str]] = frozenset(
    {
        "database",
        "concurrency",
        "host",
        "port",
        "retention",
        "api_tokens",
        "log_level",
        "log_format",
        "lease_seconds",
        "limits",
        "blob_store",
    }
)
_LIMIT_KEYS: Final[dict[str, str]] = {
    "max_queued_instances": "workflow",
    "creation_rate": "workflow",
    "account_concurrency": "account",
    "account_creation_rate": "account",
}
"""``[stepstone.limits]``: every workflow's default queued-instance limit and creation rate, and the account's
running instances and creation rate. ``false`` turns one off."""
DEFAULT_LEASE_SECONDS: Final[float] = 30.0
LEASE_SECONDS_RANGE: Final[tuple[float, float]] = (1.0, 3600.0)
"""What ``lease_seconds`` (and ``--lease-seconds``) accept: below a second renewals would never keep up."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The ``[stepstone]`` table after environment overrides."""

    database: str = DEFAULT_DATABASE
    concurrency: int = DEFAULT_CONCURRENCY
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    success_retention_ms: float | None = None
    error_retention_ms: float | None = None
    api_tokens: tuple[dict[str, Any], ...] = ()
    """``{"token": str | None, "token_sha256": str | None, "accounts": tuple[str, ...]}`` each (TokenRule fields)."""
    log_level: str | None = None
    """``debug``, ``info``, ``warning`` or ``error``; None lets each command choose (``dev``: info, others: warning)."""
    log_format: str = "text"
    """``text`` or ``json``."""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    """How long a worker's claim on an instance lasts without renewal (``stepstone dev`` and ``worker``)."""
    database_from: str = "default"
    """Where ``database`` came from: ``default``, ``file`` (``[stepstone] database``) or the environment variable."""
    limits: dict[str, Any] = field(default_factory=dict)
    """``[stepstone.limits]`` for every workflow: ``max_queued_instances``, ``creation_rate`` (None: off)."""
    account_limits: dict[str, Any] = field(default_factory=dict)
    """``[stepstone.limits]`` for the account: ``concurrency``, ``creation_rate`` (None: off)."""
    blob_store: str | None = None
    """``[stepstone] blob_store`` or ``STEPSTONE_BLOB_STORE``: an S3-compatible bucket for streamed step outputs
    (None: the store beside the database)."""


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    """A parsed project file."""

    path: Path
    """The configuration file."""
    name: str
    main: Path
    """The Python file holding the workflow classes (absolute)."""
    vars: dict[str, Any] = field(default_factory=dict)
    workflows: tuple[WorkflowConfig, ...] = ()
    settings: Settings = field(default_factory=Settings)
    warnings: tuple[str, ...] = ()
    """One line per thing ignored (unknown keys)."""
    bindings: BindingsConfig = field(default_factory=BindingsConfig)
    """KV, D1, R2, Queues, Workers AI and Vectorize bindings (:mod:`stepstone.bindings.config`)."""
    crons: tuple[str, ...] = ()
    """``[triggers] crons``: when the Worker's ``scheduled`` handler runs."""
    secrets: dict[str, str] = field(default_factory=dict)
    """The ``.dev.vars`` (else ``.env``) values, over ``[vars]`` in ``env``; with ``secrets.required``, only those
    names, taken from the process environment when the files lack them."""
    secrets_from: tuple[str, ...] = ()
    """The files (or ``environment``) the secrets came from, for ``stepstone dev``'s banner."""

    @property
    def root(self) -> Path:
        """The directory holding the configuration file."""
        return self.path.parent


# -- reading files ----------------------------------------------------------------------------------------
def find_config(start: Path) -> Path | None:
    """The first configuration file in ``start`` or a parent directory, or None."""
    start = start.resolve()
    for directory in (start, *start.parents):
        for name in CONFIG_FILES:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def strip_jsonc(text: str) -> str:
    """JSON with comments (``//``, ``/* */``) and trailing commas → plain JSON, leaving strings untouched."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def read_file(path: Path) -> dict[str, Any]:
    """The raw mapping of a TOML or JSON(C) configuration file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            data: object = tomllib.loads(text)
        else:
            data = json.loads(strip_jsonc(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level")
    return data


def _token_rule(c: _Checker, raw: object, key: str) -> dict[str, Any]:
    entry = c.table(raw, key)
    unknown = set(entry) - {"token", "token_sha256", "accounts"}
    if unknown:
        raise c.fail(key, "keys token or token_sha256, and accounts", sorted(unknown))
    token = entry.get("token")
    digest = entry.get("token_sha256")
    if (token is None) == (digest is None):
        raise c.fail(key, "exactly one of token or token_sha256", entry)
    if token is not None:
        c.string(token, f"{key}.token")
    if digest is not None and (not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest)):
        raise c.fail(f"{key}.token_sha256", "64 hex digits", digest)
    accounts = entry.get("accounts", ["*"])
    if not isinstance(accounts, list) or not accounts or not all(isinstance(a, str) and a for a in accounts):
        raise c.fail(f"{key}.accounts", 'a list of account ids, or ["*"]', accounts)
    return {"token": token, "token_sha256": digest.lower() if digest else None, "accounts": tuple(accounts)}


def _settings(c: _Checker, raw: object, warnings: list[str]) -> dict[str, Any]:
    table = c.table(raw, "stepstone")
    unknown = sorted(set(table) - _SETTINGS_KEYS)
    if unknown:
        warnings.append(f"{c.path.name}: stepstone: ignoring unknown key(s) {', '.join(unknown)}")
    out: dict[str, Any] = {}
    if "database" in table:
        out["database"] = _database_url(c.string(table["database"], "stepstone.database"), c.path.parent)
        out["database_from"] = "file"
    if "concurrency" in table:
        out["concurrency"] = c.integer(table["concurrency"], "stepstone.concurrency")
    if "host" in table:
        out["host"] = c.string(table["host"], "stepstone.host")
    if "port" in table:
        out["port"] = c.integer(table["port"], "stepstone.port", low=0, high=65535)
    if "retention" in table:
        out.update(c.retention(table["retention"], "stepstone.retention"))
    if "lease_seconds" in table:
        low, high = LEASE_SECONDS_RANGE
        out["lease_seconds"] = c.number(
            table["lease_seconds"], "stepstone.lease_seconds", low=low, high=high, unit="seconds"
        )
    for key, choices in (("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS)):
        if key in table:
            value = table[key]
            if not isinstance(value, str) or value.lower() not in choices:
                raise c.fail(f"stepstone.{key}", f"one of {', '.join(choices)}", value)
            out[key] = value.lower()
    if "limits" in table:
        limits = c.table(table["limits"], "stepstone.limits")
        for key, value in limits.items():
            if key not in _LIMIT_KEYS:
                raise c.fail(f"stepstone.limits.{key}", f"one of the keys {', '.join(_LIMIT_KEYS)}", value)
            scope = _LIMIT_KEYS[key]
            out.setdefault(f"{'account_' if scope == 'account' else ''}limits", {})[key.removeprefix("account_")] = (
                c.limit(value, f"stepstone.limits.{key}", rate=key.endswith("rate"))
            )
    if "blob_store" in table:
        out["blob_store"] = _blob_store(
            c.string(table["blob_store"], "stepstone.blob_store"), "stepstone.blob_store", c
        )
    if "api_tokens" in table:
        tokens = table["api_tokens"]
        if not isinstance(tokens, list):
            raise c.fail("stepstone.api_tokens", "a list of {token = ..., accounts = [...]} tables", tokens)
        out["api_tokens"] = tuple(_token_rule(c, t, f"stepstone.api_tokens[{i}]") for i, t in enumerate(tokens))
    return out


def _blob_store(url: str, key: str, c: _Checker) -> str:
    from stepstone.errors import ValidationError
    from stepstone.storage.s3_client import S3Location

    try:
        S3Location.from_url(url)
    except ValidationError as exc:  # its message hides the secret, which the checker's would show
        raise ConfigError(f"{c.path.name}: {key}: {exc}") from None
    return url


def _database_url(url: str, base: Path) -> str:
    """Relative SQLite paths are relative to the project (or the working directory), not to whoever runs us."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel and rel != ":memory:" and not os.path.isabs(os.path.expanduser(rel)):
            return f"sqlite:///{(base / rel).resolve()}"
    return url


def apply_env(settings: Settings, environ: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> Settings:
    """``STEPSTONE_DATABASE_URL`` (else ``DATABASE_URL``), ``_CONCURRENCY``, ``_HOST``, ``_PORT``, ``_LOG_LEVEL`` and
    ``_API_TOKEN`` over ``settings``."""
    env = os.environ if environ is None else environ
    c = _Checker(Path("environment"))
    changes: dict[str, Any] = {}
    from_env = _env_database(env)
    if from_env is not None:
        changes["database"] = _database_url(from_env[0], cwd or Path.cwd())
        changes["database_from"] = from_env[1]
    if env.get(ENV_CONCURRENCY):
        changes["concurrency"] = c.integer(env[ENV_CONCURRENCY], ENV_CONCURRENCY)
    if env.get(ENV_HOST):
        changes["host"] = env[ENV_HOST]
    if env.get(ENV_PORT):
        changes["port"] = c.integer(env[ENV_PORT], ENV_PORT, low=0, high=65535)
    if env.get(ENV_LOG_LEVEL):
        level = env[ENV_LOG_LEVEL].strip().lower()
        if level not in LOG_LEVELS:
            raise c.fail(ENV_LOG_LEVEL, f"one of {', '.join(LOG_LEVELS)}", env[ENV_LOG_LEVEL])
        changes["log_level"] = level
    if env.get(ENV_BLOB_STORE):
        changes["blob_store"] = _blob_store(env[ENV_BLOB_STORE], ENV_BLOB_STORE, c)
    if env.get(ENV_API_TOKEN):
        rule = {"token": env[ENV_API_TOKEN], "token_sha256": None, "accounts": ("*",)}
        changes["api_tokens"] = (*settings.api_tokens, rule)
    if not changes:
        return settings
    values = {f: getattr(settings, f) for f in Settings.__dataclass_fields__}
    values.update(changes)
    return Settings(**values)


def default_settings(environ: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> Settings:
    """Settings for a command run outside any project: the defaults plus the environment."""
    base = Settings(database=_database_url(DEFAULT_DATABASE, cwd or Path.cwd()))
    return apply_env(base, environ, cwd=cwd)


def parse_config(path: Path, data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ProjectConfig:
    """Check a raw configuration mapping read from ``path``."""
    path = path.resolve()
    c = _Checker(path)
    warnings: list[str] = []
    unknown = sorted(set(data) - _TOP_KEYS - _QUIET_KEYS)
    if unknown:
        warnings.append(f"{path.name}: ignoring key(s) stepstone does not use: {', '.join(unknown)}")
    name = c.string(data.get("name", path.parent.name), "name")
    raw_main = c.string(data.get("main"), "main")
    if not raw_main.endswith(".py"):
        raise c.fail("main", "a Python file (.py)", raw_main)
    main = (path.parent / raw_main).resolve()
    if not main.is_file():
        raise c.fail("main", f"an existing file (no {main})", raw_main)
    variables = c.table(data.get("vars", {}), "vars")
    workflows = parse_workflows(c, data, warnings)
    if "limits" in data:  # the Worker's limits (wrangler's top-level [limits]): every workflow's default
        top = c.table(data["limits"], "limits")
        for extra in sorted(set(top) - {"cpu_ms"}):
            warnings.append(f"{path.name}: limits: ignoring unknown key {extra}")
        if "cpu_ms" in top:
            cpu = c.integer(top["cpu_ms"], "limits.cpu_ms", high=MAX_CPU_MS)
            workflows = tuple(wf if wf.cpu_ms is not None else dataclasses.replace(wf, cpu_ms=cpu) for wf in workflows)
    bindings = parse_bindings(data, c.fail, lambda line: warnings.append(f"{path.name}: {line}"))
    taken = {wf.binding for wf in workflows if wf.binding}
    for name in bindings.names():
        if name in taken:
            raise c.fail("bindings", "binding names not used by a workflow", name)
    seen: set[tuple[str, str]] = set()
    for i, wf in enumerate(workflows):
        for key, value in (("name", wf.name), ("binding", wf.binding)):
            if not value:  # a workflow only in exports has no binding
                continue
            if (key, value) in seen:
                raise c.fail(f"workflows[{i}].{key}", "a value not used by another workflow", value)
            seen.add((key, value))
    base = Settings(database=_database_url(DEFAULT_DATABASE, path.parent))
    if "stepstone" in data:
        values = {f: getattr(base, f) for f in Settings.__dataclass_fields__}
        values.update(_settings(c, data["stepstone"], warnings))
        base = Settings(**values)
    settings = apply_env(base, environ)
    crons = parse_crons(data.get("triggers"), c.fail)
    missing: list[str] = []
    secrets, secrets_from = read_secrets(path.parent, data.get("secrets"), environ, c.fail, missing)
    warnings.extend(f"{path.name}: {line}" for line in missing)
    return ProjectConfig(
        path,
        name,
        main,
        dict(variables),
        workflows,
        settings,
        tuple(warnings),
        bindings,
        crons=crons,
        secrets=secrets,
        secrets_from=secrets_from,
    )


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> ProjectConfig:
    """Read and check a configuration file."""
    return parse_config(path, read_file(path), environ)


def client_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The token a CLI sends to a server with ``--api``: ``STEPSTONE_API_TOKEN``, if set."""
    env = os.environ if environ is None else environ
    return env.get(ENV_API_TOKEN) or None


def env_database(environ: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> str | None:
    """``STEPSTONE_DATABASE_URL``, else a usable ``DATABASE_URL`` (relative SQLite paths made absolute), or None."""
    env = os.environ if environ is None else environ
    found = _env_database(env)
    return _database_url(found[0], cwd or Path.cwd()) if found else None


def _env_database(env: Mapping[str, str]) -> tuple[str, str] | None:
    """The database URL the environment gives stepstone, and the variable it came from."""
    if env.get(ENV_DATABASE):
        return env[ENV_DATABASE], ENV_DATABASE
    fallback = env.get(ENV_DATABASE_FALLBACK, "")
    if fallback.startswith(_USABLE_URLS):
        return fallback, ENV_DATABASE_FALLBACK
    return None


def database_warning(settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """What to tell a user whose command is about to use the default SQLite file although the environment names
    a database under a name stepstone does not read (``PGHOST``, ``POSTGRES_URL``, a ``DATABASE_URL`` that is not a
    ``sqlite:///`` or ``postgresql://`` URL...), or None."""
    if settings.database_from != "default":
        return None
    env = os.environ if environ is None else environ
    names = sorted(
        name
        for name, value in env.items()
        if value and name != ENV_DATABASE and (name in _LIBPQ_VARS or _DATABASE_VAR_RE.search(name))
    )
    if not names:
        return None
    verb = "is" if len(names) == 1 else "are"
    return (
        f"using the default SQLite file {settings.database} although {', '.join(names)} {verb} set: stepstone reads "
        f"its database from --database, {ENV_DATABASE}, {ENV_DATABASE_FALLBACK} (a sqlite:/// or postgresql:// URL) "
        "or [stepstone] database"
    )
