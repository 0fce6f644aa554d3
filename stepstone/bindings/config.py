"""The bindings' part of a project file: Wrangler's own keys, checked, as frozen dataclasses.

Read from the top level of ``stepstone.toml`` / ``wrangler.toml`` / ``wrangler.jsonc``:

- ``[[kv_namespaces]] binding, id`` (``preview_id`` accepted);
- ``[[d1_databases]] binding, database_name, database_id`` (``preview_database_id``, ``migrations_dir``
  accepted);
- ``[[r2_buckets]] binding, bucket_name`` (``preview_bucket_name``, ``jurisdiction`` accepted), and stepstone's
  ``path``: the directory holding the bucket (default ``.stepstone/r2/<bucket_name>``);
- ``[[queues.producers]] binding, queue`` (``delivery_delay``) and ``[[queues.consumers]] queue, max_batch_size,
  max_batch_timeout, max_retries, dead_letter_queue, retry_delay`` (``max_concurrency`` accepted);
- ``[ai] binding`` and ``[[vectorize]] binding, index_name``, with stepstone's ``implementation =
  "module:Class"``: a class of the project implementing the binding (there is no local Workers AI).

The parser is given the file's ``fail(key, expected, value)`` so its errors read like every other config error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

Fail = Callable[[str, str, object], Exception]
Warn = Callable[[str], None]

TOP_KEYS: Final[frozenset[str]] = frozenset(
    {"kv_namespaces", "d1_databases", "r2_buckets", "queues", "ai", "vectorize"}
)
"""The top-level keys this module reads."""

MAX_BATCH_SIZE: Final[int] = 100
MAX_BATCH_TIMEOUT: Final[float] = 60.0
MAX_RETRIES: Final[int] = 100
MAX_DELAY_SECONDS: Final[int] = 43_200
"""Cloudflare's longest message delay and retry delay: 12 hours."""

_BINDING_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_IMPL_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True, slots=True)
class KVConfig:
    """One ``[[kv_namespaces]]`` entry; ``id`` names the stored namespace (the binding when omitted)."""

    binding: str
    id: str


@dataclass(frozen=True, slots=True)
class D1Config:
    """One ``[[d1_databases]]`` entry; the file is ``.stepstone/d1/<database_name>.sqlite3``."""

    binding: str
    database_name: str
    database_id: str = ""


@dataclass(frozen=True, slots=True)
class R2Config:
    """One ``[[r2_buckets]]`` entry; ``path`` is the bucket's directory (relative paths: to the project)."""

    binding: str
    bucket_name: str
    path: str = ""


@dataclass(frozen=True, slots=True)
class QueueProducerConfig:
    """One ``[[queues.producers]]`` entry."""

    binding: str
    queue: str
    delivery_delay: int = 0
    """Seconds every message sent through this binding waits before delivery (unless ``send`` says)."""


@dataclass(frozen=True, slots=True)
class QueueConsumerConfig:
    """One ``[[queues.consumers]]`` entry, Cloudflare's defaults."""

    queue: str
    max_batch_size: int = 10
    max_batch_timeout: float = 5.0
    """Seconds to wait for a full batch before delivering a smaller one."""
    max_retries: int = 3
    """Deliveries after the first; past them a message goes to ``dead_letter_queue`` (or is dropped)."""
    dead_letter_queue: str | None = None
    retry_delay: int = 0
    """Seconds a retried message waits by default."""


@dataclass(frozen=True, slots=True)
class CustomBindingConfig:
    """``[ai]`` or a ``[[vectorize]]`` entry: ``implementation`` is ``module:Class`` (empty: not configured)."""

    binding: str
    kind: str
    """``ai`` or ``vectorize``."""
    implementation: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The entry's other keys (``index_name``...), given to the class when it takes an argument."""


@dataclass(frozen=True, slots=True)
class BindingsConfig:
    """Every binding of a project besides its workflows."""

    kv: tuple[KVConfig, ...] = ()
    d1: tuple[D1Config, ...] = ()
    r2: tuple[R2Config, ...] = ()
    producers: tuple[QueueProducerConfig, ...] = ()
    consumers: tuple[QueueConsumerConfig, ...] = ()
    custom: tuple[CustomBindingConfig, ...] = ()

    def names(self) -> list[str]:
        """Every binding name, in file order by kind."""
        return [
            *(b.binding for b in self.kv),
            *(b.binding for b in self.d1),
            *(b.binding for b in self.r2),
            *(b.binding for b in self.producers),
            *(b.binding for b in self.custom),
        ]


class _Reader:
    def __init__(self, fail: Fail, warn: Warn) -> None:
        self.fail = fail
        self.warn = warn

    def entries(self, raw: object, key: str) -> list[dict[str, Any]]:
        if raw is None:
            return []
        if isinstance(raw, dict):  # a single table where an array of tables is meant
            raw = [raw]
        if not isinstance(raw, list):
            raise self.fail(key, f"a list of [[{key}]] tables", raw)
        out = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, dict):
                raise self.fail(f"{key}[{i}]", "a table", entry)
            out.append(entry)
        return out

    def known(self, entry: Mapping[str, Any], key: str, allowed: set[str]) -> None:
        extra = sorted(set(entry) - allowed)
        if extra:
            self.warn(f"{key}: ignoring unknown key(s) {', '.join(extra)}")

    def string(self, value: object, key: str, *, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string", value)
        if pattern is not None and not pattern.match(value):
            raise self.fail(key, what, value)
        return value

    def binding(self, entry: Mapping[str, Any], key: str) -> str:
        return self.string(entry.get("binding"), f"{key}.binding", pattern=_BINDING_RE, what="a Python identifier")

    def integer(self, value: object, key: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(key, f"an integer from {low} to {high}", value)
        return value

    def number(self, value: object, key: str, low: float, high: float) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(key, f"a number of seconds from {low:g} to {high:g}", value)
        return float(value)

    def queue(self, value: object, key: str) -> str:
        return self.string(value, key, pattern=_QUEUE_RE, what="a queue name (1-63 letters, digits, '-' or '_')")


def parse_bindings(data: Mapping[str, Any], fail: Fail, warn: Warn) -> BindingsConfig:
    """Read and check the binding keys of a raw configuration mapping."""
    r = _Reader(fail, warn)
    kv = []
    for i, e in enumerate(r.entries(data.get("kv_namespaces"), "kv_namespaces")):
        key = f"kv_namespaces[{i}]"
        r.known(e, key, {"binding", "id", "preview_id"})
        binding = r.binding(e, key)
        ns = r.string(e["id"], f"{key}.id") if "id" in e else binding
        kv.append(KVConfig(binding, ns))
    d1 = []
    for i, e in enumerate(r.entries(data.get("d1_databases"), "d1_databases")):
        key = f"d1_databases[{i}]"
        r.known(e, key, {"binding", "database_name", "database_id", "preview_database_id", "migrations_dir",
                         "migrations_table"})  # fmt: skip
        binding = r.binding(e, key)
        name = e.get("database_name", binding)
        name = r.string(name, f"{key}.database_name", pattern=re.compile(r"^[\w.-]+$"), what="a file-safe name")
        ident = r.string(e["database_id"], f"{key}.database_id") if "database_id" in e else ""
        d1.append(D1Config(binding, name, ident))
    r2 = []
    for i, e in enumerate(r.entries(data.get("r2_buckets"), "r2_buckets")):
        key = f"r2_buckets[{i}]"
        r.known(e, key, {"binding", "bucket_name", "preview_bucket_name", "jurisdiction", "path"})
        binding = r.binding(e, key)
        bucket = r.string(
            e.get("bucket_name"), f"{key}.bucket_name", pattern=re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$"),
            what="a bucket name (3-63 lowercase letters, digits or '-')",
        )  # fmt: skip
        path = r.string(e["path"], f"{key}.path") if "path" in e else ""
        r2.append(R2Config(binding, bucket, path))
    producers, consumers = _queues(r, data.get("queues"))
    custom = []
    if "ai" in data:
        table = data["ai"]
        if not isinstance(table, dict):
            raise fail("ai", 'a table such as [ai] binding = "AI"', table)
        custom.append(_custom(r, table, "ai", "ai"))
    for i, e in enumerate(r.entries(data.get("vectorize"), "vectorize")):
        custom.append(_custom(r, e, f"vectorize[{i}]", "vectorize"))
    config = BindingsConfig(tuple(kv), tuple(d1), tuple(r2), producers, consumers, tuple(custom))
    seen: set[str] = set()
    for name in config.names():
        if name in seen:
            raise fail("bindings", "binding names used once", name)
        seen.add(name)
    return config


def _queues(r: _Reader, raw: object) -> tuple[tuple[QueueProducerConfig, ...], tuple[QueueConsumerConfig, ...]]:
    if raw is None:
        return (), ()
    if not isinstance(raw, dict):
        raise r.fail("queues", "a table with producers and consumers", raw)
    r.known(raw, "queues", {"producers", "consumers"})
    producers = []
    for i, e in enumerate(r.entries(raw.get("producers"), "queues.producers")):
        key = f"queues.producers[{i}]"
        r.known(e, key, {"binding", "queue", "delivery_delay"})
        delay = (
            r.integer(e["delivery_delay"], f"{key}.delivery_delay", 0, MAX_DELAY_SECONDS)
            if "delivery_delay" in e
            else 0
        )
        producers.append(QueueProducerConfig(r.binding(e, key), r.queue(e.get("queue"), f"{key}.queue"), delay))
    consumers = []
    seen: set[str] = set()
    for i, e in enumerate(r.entries(raw.get("consumers"), "queues.consumers")):
        key = f"queues.consumers[{i}]"
        r.known(e, key, {"queue", "max_batch_size", "max_batch_timeout", "max_retries", "dead_letter_queue",
                         "retry_delay", "max_concurrency", "type", "visibility_timeout_ms"})  # fmt: skip
        queue = r.queue(e.get("queue"), f"{key}.queue")
        if queue in seen:
            raise r.fail(f"{key}.queue", "a queue with one consumer (Cloudflare allows one per queue)", queue)
        seen.add(queue)
        values: dict[str, Any] = {}
        if "max_batch_size" in e:
            values["max_batch_size"] = r.integer(e["max_batch_size"], f"{key}.max_batch_size", 1, MAX_BATCH_SIZE)
        if "max_batch_timeout" in e:
            values["max_batch_timeout"] = r.number(
                e["max_batch_timeout"], f"{key}.max_batch_timeout", 0, MAX_BATCH_TIMEOUT
            )
        if "max_retries" in e:
            values["max_retries"] = r.integer(e["max_retries"], f"{key}.max_retries", 0, MAX_RETRIES)
        if "retry_delay" in e:
            values["retry_delay"] = r.integer(e["retry_delay"], f"{key}.retry_delay", 0, MAX_DELAY_SECONDS)
        if e.get("dead_letter_queue") is not None:
            dlq = r.queue(e["dead_letter_queue"], f"{key}.dead_letter_queue")
            if dlq == queue:
                raise r.fail(f"{key}.dead_letter_queue", "a queue other than the one consumed", dlq)
            values["dead_letter_queue"] = dlq
        consumers.append(QueueConsumerConfig(queue, **values))
    return tuple(producers), tuple(consumers)


def _custom(r: _Reader, entry: Mapping[str, Any], key: str, kind: str) -> CustomBindingConfig:
    binding = r.binding(entry, key)
    implementation = ""
    if "implementation" in entry:
        implementation = r.string(
            entry["implementation"], f"{key}.implementation", pattern=_IMPL_RE, what='"module:Class"'
        )
    options = {k: v for k, v in entry.items() if k not in ("binding", "implementation")}
    return CustomBindingConfig(binding, kind, implementation, options)


__all__ = [
    "TOP_KEYS",
    "BindingsConfig",
    "CustomBindingConfig",
    "D1Config",
    "KVConfig",
    "QueueConsumerConfig",
    "QueueProducerConfig",
    "R2Config",
    "parse_bindings",
]
