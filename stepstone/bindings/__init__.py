"""Local bindings: KV, D1, R2 and Queues over real storage, and the Workers AI / Vectorize interfaces.

Each binding is a module with the Workers API's names and shapes:

- :mod:`~stepstone.bindings.kv`: ``KVNamespace``, a table of the project's database;
- :mod:`~stepstone.bindings.d1`: ``D1Database``, a SQLite file per database under ``.stepstone/d1/``;
- :mod:`~stepstone.bindings.r2`: ``R2Bucket``, a directory per bucket under ``.stepstone/r2/``;
- :mod:`~stepstone.bindings.queues`: ``Queue`` producers and the consumer loop feeding ``queue(batch)``;
- :mod:`~stepstone.bindings.custom`: ``[ai]`` and ``[[vectorize]]`` implemented by the project.

:func:`build_env_bindings` makes every configured binding; nothing here sees SQL (that is ``storage/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stepstone.bindings.config import BindingsConfig
from stepstone.clock import Clock
from stepstone.storage.base import Storage

STATE_DIR = ".stepstone"
"""Where local binding data lives, relative to the project: ``d1/``, ``r2/``."""


def build_env_bindings(config: BindingsConfig, *, storage: Storage, root: Path, clock: Clock) -> dict[str, Any]:
    """Binding name → binding object for every configured KV namespace, D1 database, R2 bucket, queue producer
    and AI / Vectorize binding. Cheap: nothing is opened until first use."""
    from stepstone.bindings.custom import build_custom
    from stepstone.bindings.d1 import D1Database
    from stepstone.bindings.kv import KVNamespace
    from stepstone.bindings.queues import Queue
    from stepstone.bindings.r2 import R2Bucket
    from stepstone.storage import binding_store

    out: dict[str, Any] = {}
    store = binding_store(storage) if config.kv or config.producers else None
    for kv in config.kv:
        assert store is not None
        out[kv.binding] = KVNamespace(store, kv.id, clock)
    for d1 in config.d1:
        out[d1.binding] = D1Database(str(d1_path(root, d1.database_name)), name=d1.database_name)
    for r2 in config.r2:
        path = (root / r2.path) if r2.path else root / STATE_DIR / "r2" / r2.bucket_name
        out[r2.binding] = R2Bucket(path.resolve(), name=r2.bucket_name, clock=clock)
    for producer in config.producers:
        assert store is not None
        out[producer.binding] = Queue(store, producer.queue, clock, delivery_delay=producer.delivery_delay)
    for custom in config.custom:
        out[custom.binding] = build_custom(custom, root)
    return out


def d1_path(root: Path, database_name: str) -> Path:
    """The SQLite file of a D1 database: ``.stepstone/d1/<database_name>.sqlite3`` under the project."""
    return root / STATE_DIR / "d1" / f"{database_name}.sqlite3"


__all__ = ["STATE_DIR", "build_env_bindings", "d1_path"]
