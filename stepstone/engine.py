"""The engine: storage, a worker in this process, and the registered workflows with their bindings."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from collections.abc import Mapping
from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Any

from stepstone.binding import Account, Children, Runtime, Workflow
from stepstone.clock import Clock, SystemClock
from stepstone.divergence import check_on_divergence
from stepstone.errors import ValidationError, WorkflowNotFoundError
from stepstone.executor import WorkflowDef
from stepstone.graph import code_version, workflow_graph
from stepstone.limits import AccountLimits, Limits, validate_workflow_name
from stepstone.models import DEFAULT_ACCOUNT, WorkflowRecord
from stepstone.observe import Observer, Observers
from stepstone.observe.logs import LogObserver
from stepstone.run_state import TestHooks
from stepstone.step_process import check_isolation
from stepstone.storage import storage_for_url
from stepstone.storage.base import Storage
from stepstone.text import check_text
from stepstone.worker import Worker
from stepstone.workflow import WorkflowEntrypoint, params_type

if TYPE_CHECKING:
    from stepstone.observe.metrics import Metrics

log = logging.getLogger("stepstone.engine")


class Engine:
    """Runs workflows durably on a database.

    ``async with Engine(...) as engine:`` opens the database and runs an in-process worker until the block
    exits.

    Args:
        database: ``sqlite:///path.db`` (default ``sqlite:///.stepstone/stepstone.db``) or ``postgresql://...``;
            or an already built :class:`~stepstone.storage.Storage`.
        clock: where time comes from (default: the wall clock).
        limits: engine-wide limits (default: Cloudflare's paid plan); per workflow in :meth:`register`.
        worker: run a worker in this process (False for a client that only creates and inspects).
        concurrency: instances run at once by this process's worker.
        lease_seconds: how long a worker's claim lasts without renewal.
        poll_interval: how often the worker looks for work other processes created.
        inprocess_wait_s: retry waits up to this long stay in memory; longer ones hibernate.
        purge_interval: how often (seconds of ``clock``) the worker deletes instances past their retention.
        synchronous: SQLite's synchronous pragma (``FULL`` survives power loss).
        vars: values exposed on ``env`` beside the bindings.
        loop_block_limit: seconds an ``async def`` step may block the event loop before the watchdog names it
            and fails its attempt (default: the lease renewal interval, ``min(lease_seconds / 3, 2)``, at least 1).
        account_limits: what every account's workflows share (:class:`~stepstone.limits.AccountLimits`: running
            instances, default 50,000; creation rate, default none), or a mapping of them.
        blob_store: where streamed step outputs go (default: beside the database, :mod:`stepstone.storage.blobs`):
            ``s3://KEY:SECRET@bucket/prefix?endpoint=https://host&region=auto`` for an S3-compatible bucket.
    """

    def __init__(
        self,
        database: str | Storage | None = None,
        *,
        clock: Clock | None = None,
        limits: Limits | Mapping[str, object] | None = None,
        worker: bool = True,
        concurrency: int = 100,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        inprocess_wait_s: float = 1.0,
        purge_interval: float = 60.0,
        synchronous: str = "FULL",
        vars: Mapping[str, Any] | None = None,
        loop_block_limit: float | None = None,
        account_limits: AccountLimits | Mapping[str, object] | None = None,
        blob_store: str | None = None,
    ) -> None:
        if isinstance(database, str) or database is None:
            self.storage: Storage = storage_for_url(database, synchronous=synchronous, blob_store=blob_store)
        else:
            self.storage = database
        self.clock: Clock = clock or SystemClock()
        if isinstance(limits, Mapping):
            limits = Limits.from_mapping(limits)
        self.limits: Limits = limits or Limits()
        if isinstance(account_limits, Mapping):
            account_limits = AccountLimits.from_mapping(account_limits)
        self.account_limits: AccountLimits = account_limits or AccountLimits()
        """The limits every account's workflows share: running instances (enforced by this engine's worker's
        claims) and the creation rate (by this process's bindings)."""
        self.env = SimpleNamespace(**dict(vars or {}))
        self._defs: dict[str, WorkflowDef] = {}
        self._meta: dict[str, tuple[str, str, int | None]] = {}
        self._versions: dict[str, str] = {}
        self._graphs: dict[str, str | None] = {}
        self._registering: set[asyncio.Task[str]] = set()
        self._accounts: dict[str, Account] = {}
        self._run_worker = worker
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._inprocess_wait_s = inprocess_wait_s
        self._purge_interval = purge_interval
        self._test_hooks: TestHooks | None = None  # only stepstone.testing.TestEngine sets it: mocks never run here
        self._loop_block_limit = loop_block_limit
        self.worker: Worker | None = None
        self._started = False
        self.observers = Observers([LogObserver(), *_tracing()])
        """What the engine tells of its instances (logs; metrics and traces when enabled): add your own."""
        self.metrics: Metrics | None = None
        """The Prometheus metrics, once :meth:`enable_metrics` was called."""
        self._runtime = Runtime(
            storage=self.storage,
            clock=self.clock,
            limits_for=self._limits_for,
            ensure_workflow=self._ensure_workflow,
            notify=self._notify,
            observer=self.observers,
            params_type_for=self._params_type_for,
            account_limits=self.account_limits,
        )

    # -- registration -----------------------------------------------------------------------------------
    def register(
        self,
        cls: type[WorkflowEntrypoint[Any]],
        *,
        name: str,
        binding: str | None = None,
        limits: Limits | Mapping[str, object] | None = None,
        class_name: str | None = None,
        script_name: str = "",
        concurrency: int | None = None,
        isolation: str = "thread",
        on_divergence: str | None = None,
    ) -> Workflow:
        """Register a workflow class under ``name`` (and ``env.<binding>``); returns its binding.

        ``concurrency`` caps how many instances of this workflow run at once across every worker on the
        database (Cloudflare's ``concurrency.limit``); waiting instances do not count. ``isolation="process"``
        runs its sync steps in child processes that a timeout kills (``stepstone.step_process``), instead of
        threads that run on past it. ``on_divergence="fail"`` (or the class attribute ``on_divergence``) errors an
        instance whose replay no longer reaches its recorded steps (its code changed under it) before a new step
        runs; the default, ``"record"``, records and logs it and goes on (``stepstone.divergence``).
        """
        if not (isinstance(cls, type) and issubclass(cls, WorkflowEntrypoint)):
            raise ValidationError(f"register() expects a WorkflowEntrypoint subclass, got {cls!r}")
        if concurrency is not None and (
            not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
        ):
            raise ValidationError(f"workflow {name!r}: concurrency must be a positive integer, got {concurrency!r}")
        validate_workflow_name(name, self.limits)
        check_isolation(isolation, what=f"workflow {name!r}")
        divergence = check_on_divergence(
            on_divergence if on_divergence is not None else getattr(cls, "on_divergence", "record"),
            what=f"workflow {name!r}",
        )
        check_text(class_name or cls.__name__, what="class_name")
        check_text(script_name, what="script_name")
        if isinstance(limits, Mapping):
            limits = self.limits.replace(**{str(k): v for k, v in limits.items()})
        limits = limits or self.limits
        if limits.cpu_ms is not None:
            log.warning(
                "workflow %r: limits.cpu_ms (%g ms) is enforced for sync steps (def, lambda) from their %s's CPU "
                "time; it is not enforced for async def steps, which share the event loop's thread (their timeout "
                "and the blocked-loop watchdog bound them instead)",
                name,
                limits.cpu_ms,
                "process" if isolation == "process" else "thread",
            )
        registered = json.dumps(
            {
                "class_name": class_name or cls.__name__,
                "script_name": script_name,
                "steps": limits.steps,
                "concurrency": concurrency,
            },
            sort_keys=True,
        )
        self._defs[name] = WorkflowDef(
            name,
            cls,
            limits,
            binding,
            self.env_for,
            Children(self._runtime),
            isolation=isolation,
            on_divergence=divergence,
            version_id=code_version(cls, registered),
        )
        self._graphs[name] = _graph(cls, class_name or cls.__name__)
        self._meta[name] = (class_name or cls.__name__, script_name, concurrency)
        self._versions.pop(name, None)
        wf = self.workflow(name)
        if binding:
            setattr(self.env, binding, wf)
        if self._started:
            # record the workflow and this version now (as start() does for what was registered before it), then
            # let the worker look for its instances: a version that runs an instance is one GET …/versions lists
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the engine's loop: recorded at the first create(), as before
                self.wake()
                return wf
            task = loop.create_task(self._ensure_workflow(DEFAULT_ACCOUNT, name))
            self._registering.add(task)
            task.add_done_callback(self._registered)
        return wf

    def _registered(self, task: asyncio.Task[str]) -> None:
        self._registering.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not record a workflow registered on a running engine", exc_info=task.exception())
        self.wake()

    def workflow(self, name: str) -> Workflow:
        """The binding for a workflow of the default account (registered here, or only known to the database)."""
        return self.account(DEFAULT_ACCOUNT).workflow(name)

    def account(self, account_id: str) -> Account:
        """The handle of one account: its workflows, and bindings whose instances are that account's.

        The workflows registered here live in the default account (``local``); another account has the workflows
        created in it (``PUT /accounts/{id}/workflows/{name}``), which this engine's worker runs when it has
        registered a class under the same name.

        Raises:
            ValidationError: a malformed account id.
        """
        handle = self._accounts.get(account_id)
        if handle is None:
            handle = self._accounts[account_id] = Account(self._runtime, account_id)
        return handle

    def env_for(self, account: str) -> Any:
        """The ``env`` an instance of ``account`` sees: its Workflow bindings are that account's."""
        if account == DEFAULT_ACCOUNT:
            return self.env
        scoped = self.account(account)
        return SimpleNamespace(
            **{
                key: scoped.workflow(value.name) if isinstance(value, Workflow) else value
                for key, value in vars(self.env).items()
            }
        )

    @property
    def definitions(self) -> Mapping[str, WorkflowDef]:
        """The workflows registered in this process."""
        return self._defs

    def _params_type_for(self, name: str) -> object | None:
        definition = self._defs.get(name)
        return params_type(definition.cls) if definition is not None else None

    def _limits_for(self, name: str) -> Limits:
        definition = self._defs.get(name)
        return definition.limits if definition is not None else self.limits

    async def _ensure_workflow(self, account: str, name: str) -> str:
        version = self._versions.get(name) if account == DEFAULT_ACCOUNT else None
        if version is not None:
            return version
        meta = self._meta.get(name) if account == DEFAULT_ACCOUNT else None
        if meta is None:
            # A workflow registered elsewhere (an API server runs no user code), or of another account: read its
            # record each time, so a PUT or DELETE made through another process is seen at once.
            record = await self.storage.get_workflow(account, name)
            if record is None:
                raise WorkflowNotFoundError(f"workflow {name!r} is not registered")
            return record.version_id
        now = self.clock.now()
        # Keep settings made elsewhere (a REST PUT: retention, schedules, a concurrency limit); ours win.
        existing = await self.storage.get_workflow(DEFAULT_ACCOUNT, name)
        settings: dict[str, object] = dict(json.loads(existing.config or "{}")) if existing is not None else {}
        settings["limits"] = {"steps": self._limits_for(name).steps}
        if meta[2] is not None:
            settings["concurrency"] = {"limit": meta[2]}
        config = json.dumps(settings)
        version = self._defs[name].version_id
        record = await self.storage.put_workflow(
            WorkflowRecord(name, meta[0], meta[1], version, now, now, None, config), graph=self._graphs.get(name)
        )
        self._versions[name] = record.version_id
        return record.version_id

    def _notify(self, pk: int, kind: str, generation: int | None = None) -> None:
        if self.worker is None:
            return
        if kind == "new":
            self.worker.wake()
        else:
            self.worker.signal(pk, kind, generation)

    def wake(self) -> None:
        """Make the local worker look for work now."""
        if self.worker is not None:
            self.worker.wake()

    def enable_metrics(self) -> Metrics:
        """Keep Prometheus metrics for this engine (needs ``prometheus-client``: ``stepstone[metrics]``); returns
        them, the same object on every call. ``await engine.enable_metrics().exposition()`` is the text format."""
        if self.metrics is None:
            from stepstone.observe.metrics import Metrics

            self.metrics = Metrics(self.storage, lambda: self.worker)
            self.observers.add(self.metrics)
        return self.metrics

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the database, record the registered workflows, start the worker."""
        if self._started:
            return
        await self.storage.open()
        self._started = True
        for name in self._defs:
            await self._ensure_workflow(DEFAULT_ACCOUNT, name)
        if self._run_worker:
            self.worker = Worker(
                storage=self.storage,
                clock=self.clock,
                definitions=lambda: self._defs,
                concurrency=self._concurrency,
                lease_seconds=self._lease_seconds,
                poll_interval=self._poll_interval,
                inprocess_wait_s=self._inprocess_wait_s,
                purge_interval=self._purge_interval,
                observer=self.observers,
                test_hooks=self._test_hooks,
                loop_block_limit=self._loop_block_limit,
                account_concurrency=self.account_limits.concurrency,
            )
            await self.worker.start()

    async def stop(self) -> None:
        """Stop the worker and close the database. Running instances continue at the next start."""
        if not self._started:
            return
        if self._registering:
            await asyncio.gather(*self._registering, return_exceptions=True)
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None
        await self.storage.close()
        self._started = False

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.shield(self.stop())

    # -- inspection -------------------------------------------------------------------------------------
    async def list_workflows(self, *, every_account: bool = False) -> list[WorkflowRecord]:
        """The default account's workflows the database knows (every account's with ``every_account``)."""
        return await self.storage.list_workflows(None if every_account else DEFAULT_ACCOUNT)


def _graph(cls: type[WorkflowEntrypoint[Any]], class_name: str) -> str | None:
    """The JSON of the workflow's diagram; None (logged) if its code cannot be drawn, which never fails
    registering it."""
    try:
        graph = workflow_graph(cls, class_name=class_name)
    except Exception:
        log.warning("could not draw the diagram of workflow class %s", cls.__qualname__, exc_info=True)
        return None
    return json.dumps(graph, separators=(",", ":")) if graph is not None else None


def _tracing() -> list[Observer]:
    """The trace observer when ``opentelemetry-api`` is installed (it stays idle without a tracer provider)."""
    if importlib.util.find_spec("opentelemetry") is None:
        return []
    from stepstone.observe.tracing import TraceObserver

    return [TraceObserver()]
