"""Phase 5's other process: ``python -m bench.sender <stepstone|dbos> <url>``.

Prints ``ready``, then for each instance id read on stdin sends it a ``go`` event and prints the wall time
taken just before the send call.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time


def _dbos(url: str) -> None:
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=url)
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            t = time.time()
            client.send(line.strip(), {"from": os.getpid()}, "go")
            print(repr(t), flush=True)
    finally:
        client.destroy()


def main() -> None:
    engine, url = sys.argv[1:3]
    if engine == "stepstone":
        from bench.impl_stepstone import sender

        asyncio.run(sender(url))
    else:
        _dbos(url)


if __name__ == "__main__":
    main()
