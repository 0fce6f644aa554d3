"""Child processes die with their parent: ``stepstone dev``'s worker never outlives a dev that was SIGKILLed.

A supervisor that is killed outright (SIGKILL, the OOM killer) runs no cleanup, so its children must notice on
their own. Two mechanisms, both armed by :func:`die_with_parent` in the child:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends the child SIGTERM the moment its parent
  exits, and the child stops as it does on any SIGTERM (releasing its leases);
- everywhere, :func:`parent_gone`: a poll of ``os.getppid()``, which changes (to 1 or a subreaper) once the
  parent is gone. It also closes the race where the parent died before ``prctl`` was called.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import signal
import sys

__all__ = ["die_with_parent", "parent_gone"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to send this process SIGTERM when its parent exits (Linux); True when armed.

    Raises SystemExit at once if the parent is already gone (``os.getppid()`` is no longer ``parent_pid``).
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:
        raise SystemExit(f"the parent process {parent_pid} is gone: not starting")
    return armed


async def parent_gone(parent_pid: int, *, interval: float = 0.5) -> None:
    """Return once the parent ``parent_pid`` has exited (this process was re-parented)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(interval)
