"""The Worker's own keys of a Wrangler file: ``[triggers] crons`` and the local secrets (``.dev.vars``, ``.env``).

Part of :mod:`stepstone.config` (which calls these with its error builder), kept apart so each stays short.
Wrangler's rules, from its docs (developers.cloudflare.com/workers/local-development/environment-variables):
secrets sit in ``.dev.vars``, or else in ``.env`` and ``.env.local`` (the more specific wins), in dotenv syntax,
beside the configuration file; they override ``[vars]`` of the same name. With ``secrets = {required = [...]}``
only those names are loaded, and one no file has is taken from the process environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from stepstone.cron import CronError, parse_cron

Fail = Callable[[str, str, object], Exception]
"""``fail(key, expected, value)``: the configuration error to raise (it names the file)."""

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_crons(raw: object, fail: Fail) -> tuple[str, ...]:
    """``[triggers] crons``: five-field expressions for the Worker's ``scheduled`` handler (``()`` if absent)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise fail("triggers", "a table", raw)
    for extra in sorted(set(raw) - {"crons"}):
        raise fail(f"triggers.{extra}", "only the key crons", raw[extra])
    crons = raw.get("crons", [])
    if not isinstance(crons, list):
        raise fail("triggers.crons", "a list of cron strings", crons)
    out: list[str] = []
    for i, expr in enumerate(crons):
        key = f"triggers.crons[{i}]"
        if not isinstance(expr, str) or not expr.strip():
            raise fail(key, "a non-empty string", expr)
        try:
            parse_cron(expr)
        except CronError as exc:
            raise fail(key, f"a 5-field cron expression ({exc})", expr) from None
        out.append(expr)
    return tuple(out)


def read_secrets(
    root: Path,
    raw: object,
    environ: Mapping[str, str] | None,
    fail: Fail,
    warnings: list[str],
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The local secrets of the project in ``root`` and where they came from (file names, ``environment``).

    Args:
        root: the directory of the configuration file.
        raw: the ``secrets`` table (``{required = [...]}``), or None.
        environ: the process environment (default ``os.environ``), read only for ``secrets.required``.
        fail: builds the error for a bad ``secrets`` table or an unreadable file.
        warnings: gets a line per required secret found nowhere.
    """
    from dotenv import dotenv_values

    required: list[str] | None = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise fail("secrets", "a table", raw)
        for extra in sorted(set(raw) - {"required"}):
            raise fail(f"secrets.{extra}", "only the key required", raw[extra])
        names = raw.get("required", [])
        if not isinstance(names, list) or not all(isinstance(n, str) and _NAME_RE.match(n) for n in names):
            raise fail("secrets.required", "a list of variable names", names)
        required = names
    dev_vars = root / ".dev.vars"
    files = [dev_vars] if dev_vars.is_file() else [root / ".env", root / ".env.local"]
    values: dict[str, str] = {}
    sources: list[str] = []
    for file in files:
        if not file.is_file():
            continue
        try:
            loaded = dotenv_values(file, interpolate=False)
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(file.name, "a readable dotenv file", str(exc)) from None
        values.update({k: v for k, v in loaded.items() if v is not None})
        sources.append(file.name)
    if required is None:
        return values, tuple(sources)
    env = os.environ if environ is None else environ
    kept: dict[str, str] = {}
    for name in required:
        if name in values:
            kept[name] = values[name]
        elif name in env:
            kept[name] = env[name]
            if "environment" not in sources:
                sources.append("environment")
        else:
            where = " or ".join(f.name for f in files)
            warnings.append(f"secrets.required: {name} is in no {where} and not in the environment")
    return kept, tuple(sources)
