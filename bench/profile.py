"""Where the time goes per step: phase 1 and phase 2 on stepstone, sampled by py-spy (all threads).

    .venv/bin/python -m bench.profile                 # both phases, stepstone on SQLite
    .venv/bin/python -m bench.profile --phase 2 --url postgresql://postgres@127.0.0.1:5432/x --top 30

Runs a longer version of the phase (phase 1: one instance of ``--steps`` sequential no-op steps; phase 2:
``--rounds`` rounds of 200 instances × 10 steps) under ``py-spy record --format raw --idle``, then folds the
stacks into the top functions by self time and by inclusive time, as a percentage of the samples taken while the
workload ran. Idle samples (threads blocked in ``select``/``epoll``/a queue wait) are reported apart, so the
percentages show where the CPU goes. The raw stacks are kept next to the printed summary under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, FreshDB

IDLE_MARKERS = (
    "select (selectors.py",
    "poll (selectors.py",
    "wait (threading.py",
    "_worker (concurrent/futures",
    "get (queue.py",
    "sleep (",
    "_bootstrap (threading.py",
)


async def _inner(phase: str, url: str, steps: int, rounds: int) -> None:
    from bench import impl_stepstone as ss

    if phase == "1":
        t = time.perf_counter()
        res = await ss.phase1(url, {"p1_steps": steps, "timeout_s": 600})
        print(f"phase 1: {steps} steps in {time.perf_counter() - t:.2f}s, per-step {res['per_step']}", flush=True)
    else:
        from stepstone import Engine

        async with Engine(url, concurrency=500) as engine:
            wf = engine.register(ss.StepsW, name="prof2")
            t = time.perf_counter()
            for r in range(rounds):
                await ss._create_many(wf, [{"id": f"r{r}-{i}", "params": {"steps": 10}} for i in range(200)])
            await ss._wait_status(engine, "prof2", "complete", 200 * rounds, every=0.005, timeout=600)
            wall = time.perf_counter() - t
        print(f"phase 2: {rounds * 2000} steps in {wall:.2f}s = {rounds * 2000 / wall:,.0f} steps/s", flush=True)


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; drop the line, shorten the path.
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    path = loc.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def summarize(raw: Path, top: int) -> str:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = idle = startup = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = stack.split(";")
        leaf = frames[-1]
        if any(m in leaf for m in IDLE_MARKERS) or ("process " in frames[0] and len(frames) == 1):
            idle += count
            continue
        if any("_find_and_load" in f for f in frames):
            startup += count  # imports at process start, not the workload
            continue
        total += count
        names = [_frame_name(f) for f in frames[1:]]  # frames[0] is the thread
        if names:
            self_t[names[-1]] += count
        for n in set(names):
            incl[n] += count
    out = [f"busy samples: {total} (left out: {idle} idle, {startup} importing)", "", "top by self time:"]
    for name, c in self_t.most_common(top):
        out.append(f"  {100 * c / total:5.1f}%  {name}")
    out += ["", "top by inclusive time (stepstone, sqlite3, asyncio only):"]
    shown = 0
    for name, c in incl.most_common():
        if "stepstone" in name or "sqlite3" in name or "asyncio" in name or "bench/" in name:
            out.append(f"  {100 * c / total:5.1f}%  {name}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--phase", choices=["1", "2", "both"], default="both")
    ap.add_argument("--url", default=None, help="storage URL (default: a fresh SQLite file)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.inner:
        asyncio.run(_inner(args.phase, args.url, args.steps, args.rounds))
        os._exit(0)

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    outdir = ROOT / "results"
    outdir.mkdir(parents=True, exist_ok=True)
    for phase in ("1", "2") if args.phase == "both" else (args.phase,):
        db = None
        url = args.url
        if url is None:
            db = FreshDB.create("stepstone-sqlite")
            url = db.url
        raw = Path(tempfile.mkstemp(suffix=".txt")[1])
        try:
            cmd = [
                pyspy,
                "record",
                "--format",
                "raw",
                "--idle",
                "--threads",
                "-r",
                str(args.rate),
                "-o",
                str(raw),
                "--",
                sys.executable,
                "-m",
                "bench.profile",
                "--inner",
                "--phase",
                phase,
                "--url",
                url,
                "--steps",
                str(args.steps),
                "--rounds",
                str(args.rounds),
            ]
            subprocess.run(cmd, cwd=ROOT.parent, check=True, stderr=subprocess.DEVNULL)
            text = summarize(raw, args.top)
            print(f"\n=== phase {phase} profile (py-spy, {args.rate} Hz, all threads) ===\n{text}")
            (outdir / f"profile-phase{phase}.txt").write_text(text + "\n")
            shutil.copy(raw, outdir / f"profile-phase{phase}.raw.txt")
        finally:
            raw.unlink(missing_ok=True)
            if db is not None:
                db.drop()


if __name__ == "__main__":
    main()
