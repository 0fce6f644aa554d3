"""stepstone's benchmark against its peers (issue 6).

    .venv/bin/python -m bench.run                      # full sizes, every engine available here
    .venv/bin/python -m bench.run --quick              # smaller sizes, a smoke test (about a minute per engine)
    .venv/bin/python -m bench.run --engines stepstone-sqlite,dbos-sqlite --phases 1,2 --json out.json

Engines: stepstone-sqlite, stepstone-postgres (when ``stepstone.storage.postgres`` exists), dbos-sqlite,
dbos-postgres (PostgreSQL at ``$BENCH_PG_URL``, default ``postgresql://postgres@127.0.0.1:5432``; a fresh
database per engine and phase). Every engine/phase pair runs in its own process on a fresh database, so memory
and state don't leak between them. Prints a table with stepstone/peer ratios and the disk's own commit ceiling,
and writes the JSON to ``bench/results/`` (and to ``--json`` if given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ceiling import pg_ceiling, sqlite_ceiling
from bench.common import ENGINES, PHASE_TITLES, PHASES, ROOT, SIZES, engine_unavailable

RESULTS = ROOT / "results"

# (label, phase, path into the result, better: "low" | "high", format)
METRICS: list[tuple[str, str, str, str, str]] = [
    ("1 per-step p50 (ms)", "1", "per_step.p50_ms", "low", "{:.3f}"),
    ("1 per-step p99 (ms)", "1", "per_step.p99_ms", "low", "{:.3f}"),
    ("1 fresh db: per-step p50 (ms)", "1", "fresh.per_step.p50_ms", "low", "{:.3f}"),
    ("1 fresh db: per-step p99 (ms)", "1", "fresh.per_step.p99_ms", "low", "{:.3f}"),
    ("2 throughput (steps/s)", "2", "steps_per_s", "high", "{:,.0f}"),
    ("3 concurrent create (inst/s)", "3", "single_per_s", "high", "{:,.0f}"),
    ("3 create_batch (inst/s)", "3", "batch_per_s", "high", "{:,.0f}"),
    ("3 create_batch, no worker (inst/s)", "3", "client_batch_per_s", "high", "{:,.0f}"),
    ("4 timer lateness p50 (ms)", "4", "lateness.p50_ms", "low", "{:.1f}"),
    ("4 timer lateness p99 (ms)", "4", "lateness.p99_ms", "low", "{:.1f}"),
    ("4 burst: lateness p50 (ms)", "4", "burst.lateness.p50_ms", "low", "{:.1f}"),
    ("4 burst: lateness p99 (ms)", "4", "burst.lateness.p99_ms", "low", "{:.1f}"),
    ("4 burst: start spread (ms)", "4", "burst.start_spread_ms", "low", "{:.0f}"),
    ("5 event in-process p50 (ms)", "5", "in_process.p50_ms", "low", "{:.2f}"),
    ("5 event in-process p99 (ms)", "5", "in_process.p99_ms", "low", "{:.2f}"),
    ("5 event cross-process p50 (ms)", "5", "cross_process.p50_ms", "low", "{:.1f}"),
    ("5 event cross-process p99 (ms)", "5", "cross_process.p99_ms", "low", "{:.1f}"),
    ("6 hibernating instances", "6", "instances", "none", "{:,}"),
    ("6 worker RSS (MB)", "6", "rss_mb", "low", "{:.0f}"),
    ("6 RSS per instance (KB)", "6", "kb_per_instance", "low", "{:.2f}"),
    ("7 restart -> first step (ms)", "7", "restart_to_first_step.p50_ms", "low", "{:.0f}"),
    ("7 engine ready -> first step (ms)", "7", "engine_ready_to_first_step.p50_ms", "low", "{:.1f}"),
]

# Issue 6's targets for stepstone on SQLite: (metric label, check on the value, text).
TARGETS: dict[str, tuple[Any, str]] = {
    "1 per-step p50 (ms)": (lambda v: v <= 0.25, "<= 0.25"),
    "1 fresh db: per-step p50 (ms)": (lambda v: v <= 0.25, "<= 0.25"),
    "2 throughput (steps/s)": (lambda v: v >= 10_000, ">= 10,000"),
    "3 concurrent create (inst/s)": (lambda v: v >= 3_000, ">= 3,000"),
    "3 create_batch (inst/s)": (lambda v: v >= 20_000, ">= 20,000"),
    "4 timer lateness p99 (ms)": (lambda v: v <= 20, "<= 20"),
    "5 event in-process p50 (ms)": (lambda v: v <= 2, "<= 2"),
    "6 worker RSS (MB)": (lambda v: v <= 150, "<= 150 @100k"),
}


def dig(result: dict[str, Any] | None, path: str) -> Any:
    cur: Any = result
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def machine_facts() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for pkg in ("stepstone", "dbos", "sqlalchemy", "psycopg"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:
            versions[pkg] = None
    import sqlite3

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT.parent, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    return {
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "stepstone_dirty": bool(git("status", "--porcelain", "stepstone")),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": versions,
    }


def run_phase(engine: str, phase: str, sizes: dict[str, float]) -> dict[str, Any]:
    """Run one engine/phase in its own process; its JSON answer, or an error."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.phase", engine, phase, json.dumps(sizes), out],
            cwd=ROOT.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a timeout ends its helpers too
        )
        try:
            _, stderr = proc.communicate(timeout=sizes["timeout_s"] + 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        text = Path(out).read_text() if Path(out).stat().st_size else ""
        if not text:
            return {"ok": False, "error": f"exit {proc.returncode}: {stderr[-2000:]}"}
        answer: dict[str, Any] = json.loads(text)
        if not answer.get("ok") and stderr:
            answer["stderr"] = stderr[-2000:]
        return answer
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {time.perf_counter() - t0:.0f}s"}
    finally:
        Path(out).unlink(missing_ok=True)


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def ratio_pairs(engines: list[str]) -> list[tuple[str, str]]:
    """(stepstone engine, peer) pairs to print ratios for: same backend first, then sqlite vs dbos-postgres."""
    pairs = []
    for ss in ("stepstone-sqlite", "stepstone-postgres"):
        if ss not in engines:
            continue
        for peer in ("dbos-sqlite", "dbos-postgres"):
            if peer in engines:
                pairs.append((ss, peer))
    return pairs


def table(report: dict[str, Any]) -> str:
    engines = [e for e in report["engines"] if report["engines"][e].get("available")]
    pairs = ratio_pairs(engines)
    short = {
        "stepstone-sqlite": "ss-sqlite",
        "stepstone-postgres": "ss-pg",
        "dbos-sqlite": "dbos-sqlite",
        "dbos-postgres": "dbos-pg",
    }
    head = ["metric", *engines, *[f"{short[a]}/{short[b]}" for a, b in pairs]]
    if "stepstone-sqlite" in engines:
        head += ["target (ss-sqlite)"]
    rows = [head]
    for label, phase, path, better, spec in METRICS:
        vals = {}
        row = [label + (" ↓" if better == "low" else " ↑" if better == "high" else "")]
        for e in engines:
            ph = report["engines"][e]["phases"].get(phase)
            v = dig(ph.get("result"), path) if ph and ph.get("ok") else None
            vals[e] = v
            row.append(fmt(v, spec) if ph and ph.get("ok") else ("ERR" if ph else "-"))
        for a, b in pairs:
            va, vb = vals.get(a), vals.get(b)
            if isinstance(va, int | float) and isinstance(vb, int | float) and vb and better != "none":
                row.append(f"{va / vb:.3g}")
            else:
                row.append("-")
        if "stepstone-sqlite" in engines:
            tgt = TARGETS.get(label)
            v = vals.get("stepstone-sqlite")
            if tgt is None:
                row.append("")
            elif not isinstance(v, int | float):
                row.append(tgt[1])
            else:
                row.append(f"{tgt[1]} {'ok' if tgt[0](v) else 'MISSED'}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def ceiling_lines(report: dict[str, Any]) -> list[str]:
    out = []
    c = report.get("ceiling", {}).get("sqlite")
    if c:
        out.append(
            f"SQLite WAL synchronous=FULL single-row commit ceiling: {c['commits_per_s']:,.0f} commits/s "
            f"(p50 {c['commit']['p50_ms']:.3f} ms, p99 {c['commit']['p99_ms']:.3f} ms)"
        )
        ss = report["engines"].get("stepstone-sqlite", {}).get("phases", {})
        p1 = dig(ss.get("1", {}).get("result"), "per_step.p50_ms")
        p1f = dig(ss.get("1", {}).get("result"), "fresh.per_step.p50_ms")
        p2 = dig(ss.get("2", {}).get("result"), "steps_per_s")
        if p1:
            out.append(f"  stepstone-sqlite per-step p50 = {p1 / c['commit']['p50_ms']:.2f} x one bare commit")
        if p1f:
            out.append(
                f"  stepstone-sqlite per-step p50 on a fresh database = {p1f / c['commit']['p50_ms']:.2f} "
                "x one bare commit"
            )
        if p2:
            out.append(
                f"  stepstone-sqlite throughput = {p2 / c['commits_per_s']:.2f} x the one-commit-per-step ceiling"
            )
    p = report.get("ceiling", {}).get("postgres")
    if p:
        out.append(
            f"PostgreSQL single-row autocommit ceiling (synchronous_commit={p['synchronous_commit']}): "
            f"{p['commits_per_s']:,.0f} commits/s (p50 {p['commit']['p50_ms']:.3f} ms)"
        )
    for e, info in report["engines"].items():
        if not info.get("available"):
            out.append(f"{e}: not run ({info.get('reason')})")
        for ph, res in info.get("phases", {}).items():
            if not res.get("ok"):
                out.append(f"{e} phase {ph} ({PHASE_TITLES[ph]}) failed: {res.get('error')}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller sizes (same as --sizes quick)")
    ap.add_argument("--sizes", choices=sorted(SIZES), default=None, help="size preset (default full)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated engines")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated phases 1..7")
    ap.add_argument("--json", default=None, help="also write the JSON report here")
    ap.add_argument("--results-dir", default=str(RESULTS), help="where the timestamped JSON goes")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the commit-ceiling measurement")
    args = ap.parse_args(argv)

    mode = args.sizes or ("quick" if args.quick else "full")
    sizes = SIZES[mode]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    for e in engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    for p in phases:
        if p not in PHASES:
            ap.error(f"unknown phase {p!r}; choose from 1..7")

    started = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "mode": mode,
        "sizes": sizes,
        "started": started.isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "ceiling": {},
        "engines": {},
    }
    if not args.no_ceiling:
        n = int(sizes["ceiling_commits"])
        print(f"measuring the commit ceiling ({n} commits)...", flush=True)
        report["ceiling"]["sqlite"] = sqlite_ceiling(n)
        if any(e.endswith("-postgres") for e in engines):
            report["ceiling"]["postgres"] = pg_ceiling(n)
    for engine in engines:
        reason = engine_unavailable(engine)
        info: dict[str, Any] = {"available": reason is None, "reason": reason, "phases": {}}
        report["engines"][engine] = info
        if reason is not None:
            print(f"{engine}: skipped ({reason})", flush=True)
            continue
        for phase in phases:
            t0 = time.perf_counter()
            print(f"{engine} phase {phase} ({PHASE_TITLES[phase]})...", end=" ", flush=True)
            res = run_phase(engine, phase, sizes)
            info["phases"][phase] = res
            print(f"{'ok' if res.get('ok') else 'FAILED'} in {time.perf_counter() - t0:.1f}s", flush=True)
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    text = table(report)
    print()
    print(text)
    print()
    for line in ceiling_lines(report):
        print(line)
    report["table"] = text

    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{started.strftime('%Y%m%dT%H%M%SZ')}-{mode}.json"
    payload = json.dumps(report, indent=2, default=str)
    path.write_text(payload)
    print(f"\nJSON: {path}")
    if args.json:
        Path(args.json).write_text(payload)
        print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
