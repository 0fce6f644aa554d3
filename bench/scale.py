"""How stepstone's costs grow with the work (issue 15): curves on SQLite and PostgreSQL.

    .venv/bin/python -m bench.scale                    # full sizes (a million instances), plots into docs/img/
    .venv/bin/python -m bench.scale --quick            # tiny sizes, a smoke run (the test suite runs this)
    .venv/bin/python -m bench.scale --sizes medium --curves hibernating,history --backends sqlite

Curves (each backend's curve runs in its own process on a fresh database; see ``bench/scale_runs.py``):

- hibernating: a population of instances hibernating in a one-hour sleep, grown point by point (cloned in SQL
  from a real one, ``bench/scale_seed.py``); at each point the worker's RSS, the create rate of new instances
  (``create_batch`` of 100, the worker running them), and 1,000 instances sleeping 2 s (so they hibernate)
  started within a second: their timer lateness and the worker's claim latency meanwhile. Point 0 is the
  same-run reference;
- history: one instance of each length (sequential no-op steps, then a hibernating sleep and one more step):
  per-step cost over its first vs its last tenth, the wake-up (due time → next step body), ``load_history``;
- finished: a population of finished instances: ``list`` first and last page, ``describe``, the status count;
  then the retention purge of all of them while ``fin_running`` instances step (their step gap p99 before vs
  during);
- result_size: steps returning 1 KiB … 1 MiB: MB/s recorded beside the disk's sequential write rate, same run;
- workers (PostgreSQL): 1, 2, 4 worker processes, CPU per step on each side, and the model
  (``bench/scale_workers.py``).

Beside them the bare-commit ceilings of the same run (``bench/ceiling.py``). The JSON goes to
``bench/results/<UTC time>-scale-<mode>.json``, the plots to ``--img-dir`` (default ``docs/img``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ceiling import pg_ceiling, sqlite_ceiling
from bench.common import ROOT, pg_reachable
from bench.run import machine_facts

CURVES = ("hibernating", "history", "finished", "result_size", "workers")
BACKENDS = ("sqlite", "postgres")

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "hib_points": [10_000, 100_000, 300_000, 1_000_000],
        "hib_creates": 2000,
        "hib_wakers": 1000,
        "hib_wake_s": 2.0,
        "hist_lengths": [1000, 5000, 10_000, 25_000],
        "hist_nap_s": 1.5,
        "fin_points": [100_000, 250_000, 500_000, 1_000_000],
        "fin_purge_max": 1_000_000,
        "fin_reads": 20,
        "fin_running": 200,
        "fin_warm_s": 1.0,
        "fin_baseline_s": 2.0,
        "size_bytes": [1 << 10, 8 << 10, 64 << 10, 256 << 10, (1 << 20) - 64],
        "size_total_mb": 32,
        "workers": [1, 2, 4],
        "workers_instances": 1000,
        "workers_steps": 10,
        "ceiling_commits": 2000,
        "timeout_s": 1200,
    },
    "medium": {  # what this shared 2-core machine finishes in about 30 minutes
        "hib_points": [10_000, 30_000, 100_000, 300_000],
        "hib_creates": 1000,
        "hib_wakers": 1000,
        "hib_wake_s": 2.0,
        "hist_lengths": [1000, 5000, 10_000, 25_000],
        "hist_nap_s": 1.5,
        "fin_points": [10_000, 30_000, 100_000, 200_000],
        "fin_purge_max": 30_000,
        "fin_reads": 10,
        "fin_running": 200,
        "fin_warm_s": 1.0,
        "fin_baseline_s": 2.0,
        "size_bytes": [1 << 10, 16 << 10, 128 << 10, (1 << 20) - 64],
        "size_total_mb": 16,
        "workers": [1, 2, 4],
        "workers_instances": 400,
        "workers_steps": 10,
        "ceiling_commits": 1000,
        "timeout_s": 1500,
    },
    "quick": {  # a smoke run: every curve and backend end to end, two points each
        "hib_points": [50, 200],
        "hib_creates": 20,
        "hib_wakers": 20,
        "hib_wake_s": 1.1,
        "hist_lengths": [20, 80],
        "hist_nap_s": 1.1,
        "fin_points": [50, 200],
        "fin_reads": 3,
        "fin_running": 5,
        "fin_warm_s": 0.2,
        "fin_baseline_s": 0.3,
        "size_bytes": [1 << 10, 16 << 10],
        "size_total_mb": 1,
        "workers": [1, 2],
        "workers_instances": 20,
        "workers_steps": 3,
        "ceiling_commits": 50,
        "timeout_s": 120,
    },
}


def run_curve(curve: str, backend: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """One curve on one backend in its own process; its JSON answer, or an error."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.scale_runs", curve, backend, json.dumps(sizes), out],
        cwd=ROOT.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=sizes["timeout_s"] + 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        Path(out).unlink(missing_ok=True)
        return {"ok": False, "error": f"timed out after {time.perf_counter() - t0:.0f}s"}
    text = Path(out).read_text() if Path(out).stat().st_size else ""
    Path(out).unlink(missing_ok=True)
    if not text:
        return {"ok": False, "error": f"exit {proc.returncode}: {stderr[-2000:]}"}
    answer: dict[str, Any] = json.loads(text)
    answer["log"] = stderr[-4000:]
    return answer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes (same as --sizes quick)")
    ap.add_argument("--sizes", choices=sorted(SIZES), default=None, help="size preset (default full)")
    ap.add_argument("--curves", default=",".join(CURVES), help="comma-separated: " + ", ".join(CURVES))
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite, postgres")
    ap.add_argument("--json", default=None, help="also write the JSON report here")
    ap.add_argument("--results-dir", default=str(ROOT / "results"))
    ap.add_argument("--img-dir", default=str(ROOT.parent / "docs" / "img"), help="where the plots go")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=JSON", help="override one size, e.g. hib_points=[1000,5000]"
    )
    args = ap.parse_args(argv)
    mode = args.sizes or ("quick" if args.quick else "full")
    sizes = dict(SIZES[mode])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in sizes:
            ap.error(f"--set: unknown size {key!r}; choose from {', '.join(sorted(sizes))}")
        sizes[key] = json.loads(value)
    curves = [c for c in args.curves.split(",") if c]
    backends = [b for b in args.backends.split(",") if b]
    for c in curves:
        if c not in CURVES:
            ap.error(f"unknown curve {c!r}; choose from {', '.join(CURVES)}")
    for b in backends:
        if b not in BACKENDS:
            ap.error(f"unknown backend {b!r}; choose from sqlite, postgres")
    if "postgres" in backends and (why := pg_reachable()) is not None:
        print(f"postgres: skipped ({why})", flush=True)
        backends.remove("postgres")

    started = dt.datetime.now(dt.UTC)
    t_run = time.perf_counter()
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.scale", *(argv if argv is not None else sys.argv[1:])]),
        "mode": mode,
        "sizes": sizes,
        "started": started.isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "ceiling": {},
        "curves": {},
    }
    n = int(sizes["ceiling_commits"])
    report["ceiling"]["sqlite"] = sqlite_ceiling(n)
    if "postgres" in backends:
        report["ceiling"]["postgres"] = pg_ceiling(n)
    for curve in curves:
        report["curves"][curve] = {}
        for backend in backends:
            if curve == "workers" and backend != "postgres":
                continue
            t0 = time.perf_counter()
            print(f"{curve} on {backend}...", end=" ", flush=True)
            if curve == "workers":
                from bench.scale_workers import run as run_workers

                try:
                    res: dict[str, Any] = {
                        "ok": True,
                        "result": asyncio.run(
                            run_workers(
                                list(sizes["workers"]), int(sizes["workers_instances"]), int(sizes["workers_steps"])
                            )
                        ),
                    }
                except Exception as exc:
                    res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            else:
                res = run_curve(curve, backend, sizes)
            res["elapsed_s"] = time.perf_counter() - t0
            report["curves"][curve][backend] = res
            print(
                f"{'ok' if res.get('ok') else 'FAILED: ' + str(res.get('error'))} in {res['elapsed_s']:.1f}s",
                flush=True,
            )
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["elapsed_s"] = time.perf_counter() - t_run

    from bench.scale_report import plots, tables

    text = tables(report)
    report["tables"] = text
    print()
    print(text)
    if not args.no_plots:
        report["plots"] = plots(report, Path(args.img_dir))
        for p in report["plots"]:
            print(f"plot: {p}")
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{started.strftime('%Y%m%dT%H%M%SZ')}-scale-{mode}.json"
    payload = json.dumps(report, indent=2, default=str)
    path.write_text(payload)
    print(f"\nJSON: {path}")
    if args.json:
        Path(args.json).write_text(payload)
    print(f"total {report['elapsed_s']:.0f}s")
    ok = all(r.get("ok") for c in report["curves"].values() for r in c.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
