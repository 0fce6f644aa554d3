"""A project: its configuration, its ``main`` module, and an :class:`~stepstone.engine.Engine` wired to both.

The ``main`` file is imported once per process under a private module name, with ``import workers`` resolving to
stepstone's runtime module (:mod:`stepstone.workers`) as on Cloudflare; its workflow classes are matched to
``[[workflows]]`` by ``class_name``; ``env`` carries every binding, the ``[vars]`` and the local secrets
(:func:`~stepstone.project_env.build_env`). A workflow with a ``script_name`` is defined by another project on the
same database: only its binding is made here. The project's own workflows are recorded with its ``name`` as their
script name, as Cloudflare records the Worker that defines them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from stepstone.config import ConfigError, ProjectConfig, Settings, WorkflowConfig, find_config, load_config
from stepstone.cron import Cron, cron_instance_id, parse_cron
from stepstone.engine import Engine
from stepstone.errors import StepstoneError
from stepstone.project_env import build_env
from stepstone.workers.alias import install as install_workers_module
from stepstone.workflow import WorkflowEntrypoint

log = logging.getLogger("stepstone.project")


class ProjectError(ConfigError):
    """The project's ``main`` module cannot be imported or lacks a configured class."""


class Project:
    """A loaded project configuration; :meth:`engine` builds an engine for it.

    Args:
        config: the parsed configuration.
    """

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config
        self._module: ModuleType | None = None

    @classmethod
    def load(cls, path: Path | None = None, *, cwd: Path | None = None) -> Project:
        """Load ``path``, or the configuration file found in ``cwd`` (default: the working directory) or above."""
        if path is None:
            start = cwd or Path.cwd()
            path = find_config(start)
            if path is None:
                raise ConfigError(
                    f"no stepstone.toml, wrangler.toml or wrangler.jsonc in {start.resolve()} or its parents "
                    "(create one with: stepstone init)"
                )
        return cls(load_config(path))

    @property
    def settings(self) -> Settings:
        """The ``[stepstone]`` settings after environment overrides."""
        return self.config.settings

    @property
    def root(self) -> Path:
        """The project directory."""
        return self.config.root

    def workflow(self, name: str) -> WorkflowConfig | None:
        """The configured workflow called ``name``."""
        return next((w for w in self.config.workflows if w.name == name), None)

    # -- the user's module ------------------------------------------------------------------------------
    def module(self) -> ModuleType:
        """Import ``main`` (once per project object); its directory goes on ``sys.path`` so it can import its
        neighbours."""
        if self._module is not None:
            return self._module
        main = self.config.main
        module_name = f"stepstone_project_{abs(hash(str(main)))}"
        spec = importlib.util.spec_from_file_location(module_name, main)
        if spec is None or spec.loader is None:
            raise ProjectError(f"{self.config.path.name}: main: cannot import {main}")
        module = importlib.util.module_from_spec(spec)
        install_workers_module()
        root = str(main.parent)
        if root not in sys.path:
            sys.path.insert(0, root)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ProjectError(f"{main.name}: import failed: {type(exc).__name__}: {exc}") from exc
        self._module = module
        return module

    def classes(self) -> dict[str, type[WorkflowEntrypoint[Any]]]:
        """The configured workflow classes (those without ``script_name``), by workflow name."""
        local = [w for w in self.config.workflows if not w.script_name]
        if not local:
            return {}
        module = self.module()
        found: dict[str, type[WorkflowEntrypoint[Any]]] = {}
        for wf in local:
            cls = getattr(module, wf.class_name, None)
            if not (isinstance(cls, type) and issubclass(cls, WorkflowEntrypoint)):
                what = "is not a WorkflowEntrypoint subclass" if cls is not None else "is not defined"
                raise ProjectError(
                    f"{self.config.path.name}: workflows: class_name {wf.class_name!r} of workflow {wf.name!r} "
                    f"{what} in {self.config.main.name}"
                )
            found[wf.name] = cls
        return found

    # -- the engine ------------------------------------------------------------------------------------
    def engine(
        self,
        *,
        worker: bool,
        database: str | None = None,
        concurrency: int | None = None,
        register: bool = True,
        engine_class: type[Engine] = Engine,
        **options: Any,
    ) -> Engine:
        """An engine on the project's database with every workflow registered and bound in ``env``.

        Args:
            worker: run instances in this process.
            database: overrides the configured URL.
            concurrency: overrides the configured worker concurrency.
            register: import ``main`` and register its classes (False: only the database's workflows are known,
                for a process that must not run user code).
            engine_class: the engine to build (``stepstone.testing.TestEngine`` for the pytest ``project`` fixture).
            options: passed to :class:`Engine` (``poll_interval``, ``clock``...).
        """
        settings = self.settings
        limits: dict[str, object] = dict(settings.limits)
        if settings.success_retention_ms is not None:
            limits["success_retention_ms"] = settings.success_retention_ms
        if settings.error_retention_ms is not None:
            limits["error_retention_ms"] = settings.error_retention_ms
        options.setdefault("lease_seconds", settings.lease_seconds)
        if settings.blob_store:
            options.setdefault("blob_store", settings.blob_store)
        engine = engine_class(
            database or settings.database,
            worker=worker,
            concurrency=concurrency or settings.concurrency,
            limits=limits or None,
            vars=self.config.vars,
            account_limits=settings.account_limits or None,
            **options,
        )
        classes = self.classes() if register else {}
        for wf in self.config.workflows:
            cls = classes.get(wf.name)
            if cls is not None:
                engine.register(
                    cls,
                    name=wf.name,
                    binding=wf.binding or None,
                    class_name=wf.class_name,
                    script_name=self.config.name,
                    limits=_workflow_limits(wf) or None,
                    concurrency=wf.concurrency,
                    isolation=wf.isolation,
                    on_divergence=wf.on_divergence,
                )
            elif wf.binding:  # a workflow only in exports has no env binding
                setattr(engine.env, wf.binding, engine.workflow(wf.name))
        build_env(self.config, engine)
        return engine


def _workflow_limits(wf: WorkflowConfig) -> dict[str, object]:
    """A workflow's own limits from its ``[[workflows]]`` entry: ``limits.steps``, ``limits.cpu_ms``, ``retention``."""
    limits: dict[str, object] = {}
    if wf.steps:
        limits["steps"] = wf.steps
    if wf.cpu_ms is not None:
        limits["cpu_ms"] = wf.cpu_ms
    if wf.success_retention_ms is not None:
        limits["success_retention_ms"] = wf.success_retention_ms
    if wf.error_retention_ms is not None:
        limits["error_retention_ms"] = wf.error_retention_ms
    limits.update(wf.limits)
    return limits


# -- cron schedules ---------------------------------------------------------------------------------------
def schedules_of(config: ProjectConfig) -> list[tuple[str, Cron]]:
    """``(workflow name, parsed cron)`` for every configured schedule."""
    return [(wf.name, parse_cron(expr)) for wf in config.workflows for expr in wf.schedules]


async def fire_schedules(engine: Engine, schedules: list[tuple[str, Cron]], when: datetime) -> list[str]:
    """Create the instances of every schedule that fires in the minute of ``when``; returns their ids.

    The id is derived from the cron and the firing time, and created with ``create_batch``, so a second
    process firing the same schedule skips it: each firing runs once.
    """
    minute = when.astimezone(UTC).replace(second=0, microsecond=0)
    scheduled_ms = int(minute.timestamp() * 1000)
    created: list[str] = []
    for name, cron in schedules:
        if not cron.matches(minute):
            continue
        instance_id = cron_instance_id(cron.expression, scheduled_ms)
        options = {
            "id": instance_id,
            "params": {},
            "schedule": {"cron": cron.expression, "scheduled_time": scheduled_ms},
        }
        try:
            made = (await engine.workflow(name).create_batch({"instances": [options]}, trigger="cron")).created
        except StepstoneError as exc:
            log.warning("schedule %r of workflow %s: %s", cron.expression, name, exc)
            continue
        created.extend(inst.id for inst in made)
    return created


async def run_schedules(
    engine: Engine,
    schedules: Callable[[], list[tuple[str, Cron]]],
    *,
    on_fire: Callable[[str, str], None] | None = None,
) -> None:
    """Fire the schedules at each minute boundary (by the engine's clock) until cancelled.

    ``schedules`` is called at each minute so a reloaded configuration takes effect; ``on_fire(workflow, id)``
    is told about every instance created.
    """
    clock = engine.clock
    while True:
        now = clock.now()
        next_minute = (int(now) // 60 + 1) * 60
        await clock.sleep(next_minute - now)
        current = schedules()
        ids = await fire_schedules(engine, current, datetime.fromtimestamp(next_minute, UTC))
        if on_fire is not None:
            by_id = _workflow_of(current, ids, next_minute)
            for instance_id in ids:
                with contextlib.suppress(Exception):
                    on_fire(by_id.get(instance_id, "?"), instance_id)


def _workflow_of(current: list[tuple[str, Cron]], ids: list[str], minute: float) -> Mapping[str, str]:
    ms = int(minute * 1000)
    return {cron_instance_id(cron.expression, ms): name for name, cron in current}


__all__ = ["Project", "ProjectError", "fire_schedules", "run_schedules", "schedules_of"]
