"""Tables and plots of a ``bench.scale`` report."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _ok(report: dict[str, Any], curve: str) -> dict[str, dict[str, Any]]:
    """backend -> result, for the backends where ``curve`` ran."""
    return {b: r["result"] for b, r in report["curves"].get(curve, {}).items() if r.get("ok")}


def _f(v: Any, spec: str = "{:.2f}") -> str:
    return "-" if v is None else spec.format(v)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine_line(report: dict[str, Any]) -> str:
    m = report["machine"]
    c = report["ceiling"]
    parts = [f"{m['cores']} cores ({m['cpu']}), {m['mem_gb']} GB, Python {m['python']}, SQLite {m['sqlite']}"]
    if c.get("sqlite"):
        parts.append(f"SQLite bare commit p50 {c['sqlite']['commit']['p50_ms']:.3f} ms")
    if c.get("postgres"):
        parts.append(f"PostgreSQL bare commit p50 {c['postgres']['commit']['p50_ms']:.3f} ms")
    return "; ".join(parts) + f"; git {m['git_commit']}, {report['started']}"


def tables(report: dict[str, Any]) -> str:
    out = [machine_line(report)]
    for backend, res in _ok(report, "hibernating").items():
        rows = [
            [
                f"{p['hibernating']:,}",
                _f(p["rss_mb"], "{:.0f}"),
                _f(p["create_per_s"], "{:,.0f}"),
                _f(p["claim"]["p50_ms"]),
                _f(p["claim"]["p99_ms"]),
                _f(p["lateness"]["p50_ms"], "{:.1f}"),
                _f(p["lateness"]["p99_ms"], "{:.1f}"),
                _f(p["seed_s"], "{:.0f}"),
            ]
            for p in res["points"]
        ]
        out += [
            f"\nhibernating instances, {backend}",
            _table(
                [
                    "hibernating",
                    "RSS MB",
                    "create/s",
                    "claim p50 ms",
                    "claim p99 ms",
                    "late p50 ms",
                    "late p99 ms",
                    "seed s",
                ],
                rows,
            ),
        ]
    for backend, res in _ok(report, "history").items():
        rows = [
            [
                f"{p['steps']:,}",
                _f(p["start"]["p50_ms"], "{:.3f}"),
                _f(p["end"]["p50_ms"], "{:.3f}"),
                _f(p["end_over_start"]),
                _f(p["wake_to_next_step_ms"], "{:.1f}"),
                _f(p["replay_in_run_ms"], "{:.1f}"),
                _f(p["load_history"]["p50_ms"], "{:.1f}"),
            ]
            for p in res["points"]
        ]
        out += [
            f"\nhistory length, {backend}",
            _table(
                [
                    "steps",
                    "start ms/step",
                    "end ms/step",
                    "end/start",
                    "wake->next step ms",
                    "replay in run() ms",
                    "load_history ms",
                ],
                rows,
            ),
        ]
    for backend, res in _ok(report, "finished").items():
        none = {"seconds": None, "per_s": None, "p99_ratio": None, "step_before": {}, "step_during": {}}
        rows = [
            [
                f"{p['finished']:,}",
                _f(p["list_first"]["p50_ms"]),
                _f(p["list_last"]["p50_ms"]),
                _f(p["describe"]["p50_ms"]),
                _f(p["count"]["p50_ms"]),
                _f(p.get("purge", none)["seconds"], "{:.1f}"),
                _f(p.get("purge", none)["per_s"], "{:,.0f}"),
                _f(p.get("purge", none)["step_before"].get("p99_ms"), "{:.1f}"),
                _f(p.get("purge", none)["step_before"].get("max_ms"), "{:.0f}"),
                _f(p.get("purge", none)["step_during"].get("p99_ms"), "{:.1f}"),
                _f(p.get("purge", none)["p99_ratio"]),
                _f(p.get("purge", none)["step_during"].get("max_ms"), "{:.0f}"),
            ]
            for p in res["points"]
        ]
        out += [
            f"\nfinished instances, {backend} (p50 of the reads)",
            _table(
                [
                    "finished",
                    "list first ms",
                    "list last ms",
                    "describe ms",
                    "count ms",
                    "purge s",
                    "purged/s",
                    "step p99 before ms",
                    "max before ms",
                    "during ms",
                    "ratio",
                    "max gap during ms",
                ],
                rows,
            ),
        ]
    for backend, res in _ok(report, "result_size").items():
        rows = [
            [
                f"{p['bytes']:,}",
                str(p["steps"]),
                _f(p["mb_per_s"], "{:.1f}"),
                _f(p["steps_per_s"], "{:,.0f}"),
                _f(p["disk_mb_per_s"], "{:.0f}"),
                _f(p["mb_per_s"] / p["disk_mb_per_s"] if p["disk_mb_per_s"] else None),
            ]
            for p in res["points"]
        ]
        out += [
            f"\nstep result size, {backend}",
            _table(["bytes", "steps", "MB/s", "steps/s", "disk MB/s", "fraction of disk"], rows),
        ]
    for res in _ok(report, "workers").values():
        m = res["model"]
        rows = [
            [
                str(p["workers"]),
                _f(p["steps_per_s"], "{:,.0f}"),
                _f(m["predicted_here"].get(p["workers"]) or m["predicted_here"].get(str(p["workers"])), "{:,.0f}"),
                _f(p["worker_cpu_ms_per_step"], "{:.3f}"),
                _f(p["db_cpu_ms_per_step"], "{:.3f}"),
                _f(p["transactions_per_step"], "{:.3f}"),
            ]
            for p in res["points"]
        ]
        out += [
            "\nPostgreSQL worker processes (on this machine)",
            _table(
                ["workers", "steps/s", "model here", "worker CPU ms/step", "db CPU ms/step", "transactions/step"],
                rows,
            ),
            "model, each worker on its own machine, the database on "
            f"{m['db_cores']} cores: "
            + ", ".join(f"{n}: {_f(v, '{:,.0f}')}" for n, v in m["predicted_apart"].items())
            + f"; the database saturates at ≈ {_f(m['db_saturates_at_workers'], '{:.1f}')} workers",
        ]
    return "\n".join(out)


def plots(report: dict[str, Any], img: Path) -> list[str]:
    """Write one PNG per curve into ``img``; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    img.mkdir(parents=True, exist_ok=True)
    machine = machine_line(report)
    written: list[str] = []
    style = {"sqlite": ("tab:blue", "o"), "postgres": ("tab:orange", "s")}
    ceil = report["ceiling"]

    def save(fig: Any, name: str, title: str) -> None:
        for ax in fig.axes:
            ax.xaxis.set_minor_formatter(NullFormatter())
        fig.suptitle(title, fontsize=11)
        fig.text(0.5, 0.005, machine, ha="center", va="bottom", fontsize=6.5, wrap=True)
        fig.tight_layout(rect=(0, 0.04, 1, 0.95))
        path = img / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    hib = _ok(report, "hibernating")
    if hib:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7))
        for b, res in hib.items():
            c, m = style[b]
            pts = [p for p in res["points"] if p["hibernating"] > 1] or res["points"]
            ref = res["points"][0]
            x = [p["hibernating"] for p in pts]
            axes[0][0].plot(x, [p["rss_mb"] for p in pts], marker=m, color=c, label=b)
            axes[0][1].plot(x, [p["create_per_s"] for p in pts], marker=m, color=c, label=b)
            axes[0][1].axhline(ref["create_per_s"], color=c, ls=":", lw=1, label=f"{b}: empty db")
            axes[1][0].plot(x, [p["claim"]["p99_ms"] for p in pts], marker=m, color=c, label=f"{b} p99")
            axes[1][0].plot(x, [p["claim"]["p50_ms"] for p in pts], marker=m, color=c, ls="--", label=f"{b} p50")
            axes[1][1].plot(x, [p["lateness"]["p99_ms"] for p in pts], marker=m, color=c, label=f"{b} p99")
            axes[1][1].axhline(ref["lateness"]["p99_ms"], color=c, ls=":", lw=1, label=f"{b}: empty db")
        axes[0][0].axhline(300, color="red", ls="--", lw=1, label="goal ≤ 300 MB")
        axes[1][1].axhline(20, color="red", ls="--", lw=1, label="goal ≤ 20 ms")
        for ax, t in zip(
            (axes[0][0], axes[0][1], axes[1][0], axes[1][1]),
            ("worker RSS (MB)", "create rate (instances/s)", "claim latency (ms)", "timer lateness, 1,000 wakers (ms)"),
            strict=True,
        ):
            ax.set_xscale("log")
            ax.set_xlabel("hibernating instances")
            ax.set_title(t, fontsize=9)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        axes[1][0].set_yscale("log")
        save(fig, "scale-hibernating.png", "Hibernating instances: what the population costs")

    hist = _ok(report, "history")
    if hist:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for b, res in hist.items():
            c, m = style[b]
            x = [p["steps"] for p in res["points"]]
            axes[0].plot(
                x, [p["start"]["p50_ms"] for p in res["points"]], marker=m, color=c, ls="--", label=f"{b}: first tenth"
            )
            axes[0].plot(x, [p["end"]["p50_ms"] for p in res["points"]], marker=m, color=c, label=f"{b}: last tenth")
            if ceil.get(b):
                axes[0].axhline(ceil[b]["commit"]["p50_ms"], color=c, ls=":", lw=1, label=f"{b}: bare commit")
            axes[1].plot(
                x, [p["wake_to_next_step_ms"] for p in res["points"]], marker=m, color=c, label=f"{b}: wake → next step"
            )
            axes[1].plot(
                x,
                [p["load_history"]["p50_ms"] for p in res["points"]],
                marker=m,
                color=c,
                ls="--",
                label=f"{b}: load_history",
            )
        axes[1].axhline(100, color="red", ls="--", lw=1, label="goal ≤ 100 ms at 10,000")
        axes[0].set_title("per-step cost (p50 ms)", fontsize=9)
        axes[1].set_title("after a hibernation (ms)", fontsize=9)
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("steps in the instance's history")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        axes[1].set_yscale("log")
        save(fig, "scale-history.png", "History length: one instance of N steps")

    fin = _ok(report, "finished")
    if fin:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for b, res in fin.items():
            c, m = style[b]
            x = [p["finished"] for p in res["points"]]
            for key, ls, label in (
                ("list_first", "-", "list, first page"),
                ("list_last", "--", "list, last page"),
                ("describe", "-.", "describe"),
                ("count", ":", "status count"),
            ):
                axes[0].plot(
                    x, [p[key]["p50_ms"] for p in res["points"]], marker=m, color=c, ls=ls, label=f"{b}: {label}"
                )
            purged = [p for p in res["points"] if "purge" in p]
            px = [p["finished"] for p in purged]
            for key, ls, label in (("step_during", "-", "during the purge"), ("step_before", ":", "before (same run)")):
                axes[1].plot(
                    px, [p["purge"][key]["p99_ms"] for p in purged], marker=m, color=c, ls=ls, label=f"{b}: {label}"
                )
        axes[0].axhline(20, color="red", ls="--", lw=1, label="goal ≤ 20 ms p50")
        axes[0].set_title("reads (p50 ms)", fontsize=9)
        axes[1].set_title("running instances' step gap p99 (ms)", fontsize=9)
        for ax in axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("finished instances in the database")
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
        save(fig, "scale-finished.png", "Finished instances: reads, and the retention purge of all of them")

    size = _ok(report, "result_size")
    if size:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for b, res in size.items():
            c, m = style[b]
            x = [p["bytes"] for p in res["points"]]
            ax.plot(x, [p["mb_per_s"] for p in res["points"]], marker=m, color=c, label=f"{b}: recorded")
            ax.plot(
                x, [p["disk_mb_per_s"] for p in res["points"]], color=c, ls=":", label=f"{b} run: disk sequential write"
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("step result (bytes)")
        ax.set_ylabel("MB/s")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        save(fig, "scale-result-size.png", "Step result size: MB/s recorded vs the disk")

    workers = _ok(report, "workers")
    if workers:
        res = next(iter(workers.values()))
        m = res["model"]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        x = [p["workers"] for p in res["points"]]
        ax.plot(
            x, [p["steps_per_s"] for p in res["points"]], marker="s", color="tab:orange", label="measured, this machine"
        )
        here = [m["predicted_here"].get(n, m["predicted_here"].get(str(n))) for n in x]
        ax.plot(x, here, color="tab:orange", ls="--", label="model, this machine")
        ax_x = [int(n) for n in m["predicted_apart"]]
        ax.plot(
            ax_x, list(m["predicted_apart"].values()), color="tab:green", ls="-.", label="model, one machine per worker"
        )
        if ceil.get("postgres"):
            ax.axhline(ceil["postgres"]["commits_per_s"], color="grey", ls=":", label="one-row commits/s (same run)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("worker processes")
        ax.set_ylabel("steps/s")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        save(fig, "scale-workers.png", "PostgreSQL: worker processes")
    return written
