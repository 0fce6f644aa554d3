"""The benchmark runs end to end: ``bench.run`` at tiny sizes on stepstone-sqlite writes every phase."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_bench_run_tiny_stepstone_sqlite(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--sizes",
            "tiny",
            "--engines",
            "stepstone-sqlite",
            "--json",
            str(out),
            "--results-dir",
            str(tmp_path / "results"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["ceiling"]["sqlite"]["commits_per_s"] > 0
    phases = report["engines"]["stepstone-sqlite"]["phases"]
    assert sorted(phases) == ["1", "2", "3", "4", "5", "6", "7"]
    for name, result in phases.items():
        assert result["ok"], f"phase {name}: {result.get('error')}\n{result.get('traceback', '')}"
    assert phases["1"]["result"]["per_step"]["n"] > 0
    assert phases["2"]["result"]["steps_per_s"] > 0
    assert phases["6"]["result"]["rss_mb"] > 0
    assert "per-step" in report["table"]
