"""Every CLI command has help text and is documented in docs/cli.md (sqlite-utils' test_docs idea)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from stepstone.cli import cli

DOCS = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from commands(command, path)


ALL = list(commands(cli))


def test_the_cli_has_its_commands() -> None:
    names = {" ".join(path) for path, _ in ALL}
    for expected in (
        "init",
        "dev",
        "worker",
        "serve",
        "db migrate",
        "db status",
        "workflows trigger",
        "workflows instances send-event",
    ):
        assert expected in names


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in ALL])
def test_every_command_has_help_and_docs(path: str) -> None:
    command = dict((" ".join(p), c) for p, c in ALL)[path]
    assert (command.help or command.short_help or "").strip(), f"`stepstone {path}` has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"`stepstone {path}` option {param.opts} has no help text"
    if isinstance(command, click.Group):
        return
    *parent, last = path.split()
    # "workflows instances pause|resume|terminate NAME ID" documents all three verbs.
    pattern = re.escape(" ".join(parent)) + r"\s*[\w|\\-]*\b" + re.escape(last) + r"\b" if parent else rf"\b{last}\b"
    assert re.search(r"stepstone " + pattern, DOCS) or re.search(r"`" + pattern, DOCS), (
        f"`stepstone {path}` is not in docs/cli.md"
    )
