"""``bench.scale --quick`` runs every curve end to end (tiny sizes) and writes its JSON and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_bench_scale_quick(tmp_path: Path) -> None:
    backends = "sqlite,postgres" if os.environ.get("STEPSTONE_TEST_POSTGRES") else "sqlite"
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scale",
            "--quick",
            "--backends",
            backends,
            "--json",
            str(out),
            "--results-dir",
            str(tmp_path / "results"),
            "--img-dir",
            str(tmp_path / "img"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=290,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    expected = {"hibernating", "history", "finished", "result_size"}
    if "postgres" in backends:
        expected.add("workers")
    assert {c for c, runs in report["curves"].items() if runs} == expected
    for curve, runs in report["curves"].items():
        for backend, result in runs.items():
            assert result["ok"], f"{curve} on {backend}: {result.get('error')}\n{result.get('traceback', '')}"
    hib = report["curves"]["hibernating"]["sqlite"]["result"]["points"]
    assert [p["hibernating"] for p in hib][-1] >= 200
    assert all(p["lateness"]["n"] == 20 for p in hib)
    fin = report["curves"]["finished"]["sqlite"]["result"]["points"]
    assert [p["finished"] for p in fin] == [50, 200]
    assert all(p["purge"]["purged"] == p["finished"] for p in fin)
    hist = report["curves"]["history"]["sqlite"]["result"]["points"]
    assert [p["steps"] for p in hist] == [20, 80]
    names = sorted(Path(p).name for p in report["plots"])
    assert "scale-hibernating.png" in names and "scale-history.png" in names
    assert all(Path(p).stat().st_size > 0 for p in report["plots"])
    assert "hibernating instances, sqlite" in report["tables"]
