"""``env``: what a project's workflows and its Worker see as ``self.env``.

One object per engine (``engine.env``), built here once: the ``[vars]``, then the local secrets (``.dev.vars`` or
``.env``, over vars of the same name, as Wrangler does), then the bindings (:mod:`stepstone.bindings`). The
workflow bindings are already on it (:meth:`~stepstone.engine.Engine.register`). A name used twice is an error
naming both uses, as Wrangler refuses duplicate binding names.
"""

from __future__ import annotations

from typing import Any

from stepstone.bindings import build_env_bindings
from stepstone.config import ConfigError, ProjectConfig
from stepstone.engine import Engine
from stepstone.workers.entrypoints import set_process_env


def build_env(config: ProjectConfig, engine: Engine) -> Any:
    """Complete ``engine.env`` for the project and make it ``workers.env``; returns it.

    Raises:
        ConfigError: a binding whose name a workflow binding or another binding already uses.
    """
    env = engine.env
    owners: dict[str, str] = {wf.binding: f"workflow {wf.name!r}" for wf in config.workflows if wf.binding}
    for name, value in config.vars.items():
        if name in owners:
            raise ConfigError(f"{config.path.name}: vars.{name}: the name is already the binding of {owners[name]}")
        setattr(env, name, value)
        owners[name] = "a var"
    for name, value in config.secrets.items():
        if name in owners and owners[name] != "a var":
            raise ConfigError(
                f"{name} (from {', '.join(config.secrets_from)}): the name is already the binding of {owners[name]}"
            )
        setattr(env, name, value)
        owners[name] = "a secret"

    # -- bindings (stepstone.bindings) --
    bound = build_env_bindings(config.bindings, storage=engine.storage, root=config.root, clock=engine.clock)
    for name, value in bound.items():
        if name in owners:
            raise ConfigError(f"{config.path.name}: binding {name!r} is already the name of {owners[name]}")
        setattr(env, name, value)
        owners[name] = "a binding"
    set_process_env(env)
    return env


__all__ = ["build_env"]
