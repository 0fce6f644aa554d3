"""The ``stepstone`` command: ``init``, ``dev``, ``worker`` and wrangler's ``workflows ...`` verbs.

Each subcommand lives in its own module and is attached in :data:`COMMANDS`, the one place to add one.
Errors a user can cause print one line on stderr: exit 2 for a usage error, 1 for anything else.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import click

from stepstone import __version__
from stepstone.errors import StepstoneError

COMMANDS: tuple[tuple[str, bool], ...] = (
    # ("module:attribute", optional): an optional module that is not installed (yet) is left out.
    ("stepstone.cli.init:init", False),
    ("stepstone.cli.dev:dev", False),
    ("stepstone.cli.worker:worker", False),
    ("stepstone.cli.workflows:workflows", False),
    ("stepstone.cli.serve:serve", True),  # the REST server issue
    ("stepstone.cli.db:db", True),  # the PostgreSQL issue: stepstone db migrate|status
    ("stepstone.cli.d1:d1", False),  # wrangler d1 execute on the project's local D1 files
)


def _error(message: str, code: int) -> None:
    click.echo(f"✘ [ERROR] {' '.join(message.split()) if code == 2 else message}", err=True)
    sys.exit(code)


class StepstoneCLI(click.Group):
    """A click group whose errors are one line on stderr, never a traceback for a user mistake."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            _error(f"{exc.format_message()}{hint}", 2)
        except click.ClickException as exc:
            _error(exc.format_message(), exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            _error("aborted", 130)
        except StepstoneError as exc:
            _error(str(exc), 1)
        except KeyboardInterrupt:
            sys.exit(130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


@click.group(cls=StepstoneCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stepstone")
def cli() -> None:
    """stepstone: Cloudflare Workflows for Python, self-hosted."""


def _attach() -> None:
    for spec, optional in COMMANDS:
        module_name, _, attribute = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if optional and exc.name == module_name:
                continue
            raise
        cli.add_command(getattr(module, attribute))


_attach()


def main(argv: Sequence[str] | None = None) -> None:
    """The console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="stepstone")
