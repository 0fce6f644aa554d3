"""One engine, one phase, in its own process: ``python -m bench.phase <engine> <phase> <sizes-json> <out.json>``.

Makes a fresh database (a new SQLite file, or a new PostgreSQL database), runs the phase, writes
``{"ok", "result" | "error", "elapsed_s"}`` to ``out.json`` and drops the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import traceback

from bench.common import FreshDB


def main() -> None:
    engine, phase, sizes_json, out = sys.argv[1:5]
    sizes = json.loads(sizes_json)
    logging.basicConfig(level=logging.WARNING)
    db = FreshDB.create(engine)
    t0 = time.perf_counter()
    try:
        if engine.startswith("stepstone"):
            from bench import impl_stepstone as impl
        else:
            from bench import impl_dbos as impl  # type: ignore[no-redef]
        fn = getattr(impl, f"phase{phase}")
        result = asyncio.run(fn(db.url, sizes))
        payload = {"ok": True, "result": result}
    except BaseException as exc:  # report, don't crash the run
        payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    payload["elapsed_s"] = time.perf_counter() - t0
    with open(out, "w") as fh:
        json.dump(payload, fh)
    db.drop()
    sys.stdout.flush()
    os._exit(0)  # don't wait for engines' daemon threads


if __name__ == "__main__":
    main()
