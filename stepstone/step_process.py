"""Sync steps in processes of their own, for workflows registered with ``isolation="process"``.

A thread cannot be stopped, so a sync step that times out under thread isolation runs on to its end (its retry
waits for it). Under process isolation each attempt of a sync step runs in a child process (a fresh interpreter,
``python -m stepstone.step_process``, talking over two pipes of its own: never a ``fork`` of the threaded
worker, and never a re-run of the worker's ``__main__``, as ``multiprocessing``'s spawn would), and an attempt
that times out, passes its CPU limit or whose run ends has its process killed (SIGKILL): its side effects stop
there, and the retry starts in a fresh process. Idle children are kept for the next attempt. The attempt's
timeout counts from when the step's code starts in its process (after the process started and imported it).

What crosses the boundary:

- the step's callable, pickled *by reference*: a module-level ``def`` (or a ``functools.partial`` of one, whose
  bound arguments are pickled with it) in a module the child can import (a project's ``main`` is imported from
  its file). A lambda, a nested function or a closure cannot be: the attempt fails at once, not retried, with a
  :class:`~stepstone.errors.ValidationError` naming the step;
- its arguments (``ctx``, the results of the steps a declared step depends on) and its return value, as the
  codec's stored form (JSON, bytes, datetime), never pickle;
- an exception it raises, as its class (``module:qualname``), message and traceback text, rebuilt in the worker
  as a replay rebuilds a stored failure.

The child process's CPU time (all its threads) counts against ``limits.cpu_ms``: the child stops itself and
reports it once over the limit.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Final

from stepstone import codec, typed
from stepstone.errors import (
    CPUTimeLimitError,
    NonRetryableError,
    SerializationError,
    StepFailedError,
    StepProcessError,
    ValidationError,
)
from stepstone.tracebacks import REMOTE, format_failure

ISOLATIONS: Final[tuple[str, ...]] = ("thread", "process")
"""How a workflow's sync steps run: in the worker's step threads (the default) or in child processes."""

_CTX: Final[str] = "$stepstone_ctx"
_STARTED: Final[bytes] = b'["started"]'
"""The child's first answer: the step's code starts now (its module is imported, its callable unpickled)."""
_CPU_POLL_S: Final[float] = 0.01


def check_isolation(value: object, *, what: str) -> str:
    """``value`` if it is a known isolation, else a ValidationError naming ``what``."""
    if value not in ISOLATIONS:
        raise ValidationError(f'{what}: isolation must be "thread" or "process", got {value!r}')
    return str(value)


class _Child:
    """One child process and the parent's ends of its two pipes."""

    __slots__ = ("process", "reader", "writer")

    def __init__(self, process: subprocess.Popen[bytes], reader: Connection, writer: Connection) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        for end in (self.reader, self.writer):
            with contextlib.suppress(Exception):
                end.close()
        with contextlib.suppress(Exception):
            self.process.wait(5.0)


class ProcessCall:
    """One attempt of a sync step, prepared on the loop: run it (in a step thread) with :meth:`run`, stop it from
    anywhere with :meth:`kill`."""

    __slots__ = ("_assigned", "_child", "_killed", "_lock", "_message", "_pool", "display", "job")

    def __init__(self, pool: StepProcesses, display: str, message: bytes) -> None:
        self._pool = pool
        self.display = display
        self._message = message
        self._child: _Child | None = None
        self._killed = False
        self._lock = threading.Lock()
        self.job: Any = None
        """The step thread's job running this call: its ``started`` moves to when the step's code starts in its
        process (after the process started and imported the step's module), where its timeout begins."""
        self._assigned = threading.Event()

    def attach(self, job: Any) -> None:
        """The step thread's job that runs this call (see ``job``); called right after it was submitted."""
        self.job = job
        self._assigned.set()

    def run(self) -> Any:
        """Run the attempt in a child process and return its decoded value, or raise its rebuilt error."""
        self._assigned.wait()
        self.job.started = None  # the timeout begins when the step's code does (the child says when)
        child = self._pool._take()
        with self._lock:
            if self._killed:
                self._pool._give_back(child)
                raise StepProcessError(f'step "{self.display}": stopped before its process started')
            self._child = child
        try:
            child.writer.send_bytes(self._message)
            reply = child.reader.recv_bytes()
            if reply == _STARTED:
                self.job.started = time.monotonic()
                reply = child.reader.recv_bytes()
        except (EOFError, OSError) as exc:
            child.kill()
            if self._killed:
                raise StepProcessError(f'step "{self.display}": its process was killed') from None
            code = child.process.returncode
            raise StepProcessError(
                f'step "{self.display}": its process died before it answered (exit code {code})'
            ) from exc
        with self._lock:
            self._child = None
        kind, *rest = json.loads(reply)
        if kind == "cpu":
            child.kill()
            raise CPUTimeLimitError(rest[0])
        self._pool._give_back(child)
        if kind == "ok":
            return codec.decode(rest[0])
        raise _rebuild(*rest)

    def kill(self) -> None:
        """Stop the attempt: its process, if it has one, is killed (SIGKILL) and not reused."""
        with self._lock:
            self._killed = True
            child, self._child = self._child, None
        if child is not None:
            child.kill()


class StepProcesses:
    """The child processes of one worker's process-isolated sync steps; started on first use."""

    def __init__(self, *, keep_idle: int = 8) -> None:
        self._keep_idle = keep_idle
        self._idle: list[_Child] = []
        self._lock = threading.Lock()
        self._closed = False

    def prepare(
        self, display: str, fn: Callable[..., Any], call: Callable[[], Any], cpu_s: float | None, cpu_message: str
    ) -> ProcessCall:
        """The attempt's message for a child: ``fn`` pickled by reference, the arguments ``call`` adds to it
        through the codec. Raises ValidationError when ``fn`` cannot be pickled or its arguments encoded."""
        args, kwargs = _added_arguments(fn, call)
        ctx = next((v for v in (*args, *kwargs.values()) if _is_ctx(v)), None)
        try:
            pickled = pickle.dumps((fn, None if ctx is None else type(ctx)))
        except Exception as exc:
            raise ValidationError(
                f'step "{display}": isolation="process" runs sync steps in a process of their own, so the step '
                "must be picklable by reference: a module-level def (or a functools.partial of one), not a "
                f"lambda, a nested function or a closure; {fn!r} is not ({type(exc).__name__}: {exc})"
            ) from None
        module = getattr(fn, "__module__", None) or getattr(getattr(fn, "func", None), "__module__", None)
        origin = _origin(module)
        plain_args = [_CTX if v is ctx and ctx is not None else v for v in args]
        plain_kwargs = {k: (_CTX if v is ctx and ctx is not None else v) for k, v in kwargs.items()}
        encoded = codec.encode({"args": plain_args, "kwargs": plain_kwargs}, what=f'step "{display}" arguments')
        context = None if ctx is None else [ctx.attempt, ctx.step["name"], ctx.step["count"], ctx.config]
        header = json.dumps([module, origin, encoded, context, cpu_s, cpu_message, sys.path]).encode()
        return ProcessCall(self, display, len(header).to_bytes(4, "big") + header + pickled)

    def _take(self) -> _Child:
        with self._lock:
            if self._closed:
                raise StepProcessError("the worker is stopping")
            while self._idle:
                child = self._idle.pop()
                if child.alive():
                    return child
                child.kill()
        from_parent, to_child = os.pipe()
        from_child, to_parent = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(from_parent), str(to_parent), str(os.getpid())],
                pass_fds=(from_parent, to_parent),
                stdin=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        except BaseException:
            for fd in (to_child, from_child):
                os.close(fd)
            raise
        finally:
            os.close(from_parent)
            os.close(to_parent)
        return _Child(process, Connection(from_child, writable=False), Connection(to_child, readable=False))

    def _give_back(self, child: _Child) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._keep_idle:
                self._idle.append(child)
                return
        child.kill()

    def shutdown(self) -> None:
        """Kill the idle children; later attempts fail (busy ones are killed by their runs ending)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()


def _is_ctx(value: object) -> bool:
    # step_do (above this layer) defines StepContext: known by name here, and rebuilt in the child from its class
    cls = type(value)
    return cls.__qualname__ == "StepContext" and cls.__module__ == "stepstone.step_do"


def _added_arguments(fn: Callable[..., Any], call: Callable[[], Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """What the executor bound to ``fn`` to make ``call`` (``ctx``, declared steps' results)."""
    if call is fn or not isinstance(call, functools.partial):
        return (), {}
    if isinstance(fn, functools.partial) and call.func is fn.func:  # partial() of a partial is flattened
        args = call.args[len(fn.args) :]
        kwargs = {k: v for k, v in call.keywords.items() if k not in fn.keywords or fn.keywords[k] is not v}
        return args, kwargs
    return call.args, dict(call.keywords)


def _origin(module: str | None) -> str | None:
    """The file of ``module``: the child imports it from there when it cannot by name (a project's main, which
    is loaded from its path under a name of its own)."""
    path = getattr(sys.modules.get(module or ""), "__file__", None)
    return path if isinstance(path, str) and os.path.exists(path) else None


def _rebuild(ref: str, name: str, message: str, trace: str) -> BaseException:
    """A child's exception, as a replay rebuilds a stored failure: its class when importable, with the child's
    traceback as a note."""
    exc: BaseException = StepFailedError(name, message)
    try:
        module_name, _, qualname = ref.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, Exception):
            exc = obj.__new__(obj)
            exc.args = (message,)
            if isinstance(exc, NonRetryableError | StepFailedError):
                exc.name = name
    except Exception:
        pass
    if trace:
        setattr(exc, REMOTE, f"{trace.rstrip()}\n(raised in the step's process)")
    return exc


# -- the child --------------------------------------------------------------------------------------------
def _import(module: str | None, origin: str | None) -> None:
    """Make ``module`` importable in the child: by name, or from its file (a project's main)."""
    if not module or module in sys.modules or origin is None:
        return
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec(module) is not None:
            return
    spec = importlib.util.spec_from_file_location(module, origin)
    if spec is None or spec.loader is None:
        return
    mod = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(origin)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[module] = mod
    spec.loader.exec_module(mod)


def _watch_cpu(
    conn: Connection, send: threading.Lock, done: threading.Event, limit_s: float, start: float, message: str
) -> None:
    """Stop the process once the attempt has used more than ``limit_s`` of CPU (every thread of it counts)."""
    while not done.wait(_CPU_POLL_S):
        if time.process_time() - start > limit_s:
            with send:
                if done.is_set():
                    return
                with contextlib.suppress(Exception):
                    conn.send_bytes(json.dumps(["cpu", message]).encode())
                os._exit(3)


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent and not _parent_alive(parent):
            os._exit(2)


def _parent_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _serve(reader: Connection, conn: Connection, parent: int) -> None:  # pragma: no cover - child process
    """The child's loop: one attempt per message, its reply, until the worker closes the pipe."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    send = threading.Lock()
    while True:
        try:
            message = reader.recv_bytes()
        except (EOFError, OSError):
            return
        size = int.from_bytes(message[:4], "big")
        module, origin, encoded, context, cpu_s, cpu_message, path = json.loads(message[4 : 4 + size])
        sys.path.extend(p for p in path if p not in sys.path)
        done = threading.Event()
        if cpu_s is not None:
            watch = (conn, send, done, cpu_s, time.process_time(), cpu_message)
            threading.Thread(target=_watch_cpu, args=watch, daemon=True).start()
        try:
            _import(module, origin)
            fn, ctx_cls = pickle.loads(message[4 + size :])
            ctx = None if ctx_cls is None else ctx_cls(*context)
            conn.send_bytes(_STARTED)
            value = _call(fn, encoded, ctx)
            if typed.return_type(fn) is not None:  # a dataclass or model result crosses in its plain form
                value = typed.to_plain(value)
            reply = ["ok", codec.encode(value, what="the step's result")]
        except BaseException as exc:  # handed back to the worker, which rebuilds it
            name = getattr(exc, "name", None) if isinstance(exc, NonRetryableError) else None
            cls = type(exc)
            reply = ["error", f"{cls.__module__}:{cls.__qualname__}", name or cls.__name__, str(exc)]
            reply.append(format_failure(exc) or "")
        with send:
            done.set()
            conn.send_bytes(json.dumps(reply).encode())


def _call(fn: Callable[..., Any], encoded: str, ctx: object) -> Any:  # pragma: no cover - child
    arguments = codec.decode(encoded)
    assert isinstance(arguments, dict)
    args = [ctx if a == _CTX else a for a in arguments["args"]]
    kwargs = {k: (ctx if v == _CTX else v) for k, v in arguments["kwargs"].items()}
    value = fn(*args, **kwargs)
    if hasattr(value, "__await__"):
        with contextlib.suppress(Exception):
            value.close()
        raise SerializationError('a sync step under isolation="process" returned an awaitable; make it async def')
    return value


def child_main() -> None:  # pragma: no cover - the child process
    """The child's entry point: ``argv`` holds its two pipe ends and the worker's pid."""
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False), int(sys.argv[3]))


_CHILD: Final[str] = "from stepstone.step_process import child_main; child_main()"
