"""Before and after of the ``finished`` curve: two ``bench.scale`` JSON reports per backend, one plot.

    .venv/bin/python -m bench.scale_compare --before base-sqlite.json,base-postgres.json \
        --after counts-sqlite.json,counts-postgres.json --out docs/img/scale-finished-counts.png

Each report is one ``--curves finished`` run; run the before and after ones back to back (the machine is
shared: compare within one run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

READS = (("list_first", "list, first page"), ("list_last", "list, last page"), ("count", "status count"))
NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def _finished(paths: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in paths.split(","):
        report = json.loads(Path(path).read_text())
        for backend, res in report["curves"]["finished"].items():
            if res.get("ok"):
                out[backend] = res["result"]["points"]
    return out


def plot(before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = [b for b in NAMES if b in before and b in after]
    fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 4), squeeze=False)
    colors = {"list_first": "tab:blue", "list_last": "tab:green", "count": "tab:red"}
    for ax, backend in zip(axes[0], backends, strict=True):
        for side, points, ls in (("before", before[backend], "--"), ("after", after[backend], "-")):
            x = [p["finished"] for p in points]
            for key, label in READS:
                y = [max(p[key]["p50_ms"], 0.001) for p in points]
                ax.plot(x, y, ls=ls, marker="o", color=colors[key], label=f"{label}, {side}")
        ax.axhline(20, color="black", ls=":", lw=1, label="goal ≤ 20 ms p50")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{NAMES[backend]}: reads p50 (ms)", fontsize=9)
        ax.set_xlabel("finished instances in the database")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("Finished instances: COUNT(*) (before) vs the counts kept by triggers (after), same run", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="comma-separated bench.scale JSON reports")
    ap.add_argument("--after", required=True, help="comma-separated bench.scale JSON reports")
    ap.add_argument("--out", default="docs/img/scale-finished-counts.png")
    args = ap.parse_args(argv)
    plot(_finished(args.before), _finished(args.after), Path(args.out))
    print(args.out)


if __name__ == "__main__":
    main()
