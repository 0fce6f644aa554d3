"""``stepstone dev`` on Cloudflare's own Python Workflows example (``cloudflare/python-workers-examples``,
``10-workflows``, its ``wrangler.jsonc`` as published): the Worker's ``fetch`` answers on the API's port over real
HTTP, creates an instance and reports its status; the API and the dashboard keep their paths; an edit restarts
the worker child and the next request waits for it instead of failing."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_cli_dev import free_port, wait_for
from tests.test_workers_module import DAG_JSONC, DAG_PY


@pytest.fixture
def dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text(DAG_PY)
    (tmp_path / "wrangler.jsonc").write_text(DAG_JSONC)
    (tmp_path / ".dev.vars").write_text('API_KEY="dev-key"\n')
    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)
    port = free_port()
    log = (tmp_path / "dev.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepstone.cli", "dev", "--port", str(port), "--watch-interval", "0.1"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield tmp_path, f"http://127.0.0.1:{port}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=30)
    except httpx.HTTPError:
        return None


def test_dev_serves_cloudflares_workflows_example_on_the_api_port(dev: tuple[Path, str]) -> None:
    root, base = dev
    log = root / "dev.log"
    home = wait_for(lambda: (r := get(base + "/")) is not None and r.status_code == 200 and r, 60, "the Worker")
    assert home.text.startswith("Use /start or the dashboard UI to trigger the workflow.")
    assert home.headers["content-type"] == "text/plain;charset=UTF-8"
    assert len(home.headers.get_list("date")) == 1  # the proxy drops the child's own uvicorn headers

    started = httpx.get(base + "/start", timeout=30)
    instance_id = started.text.rsplit(" ", 1)[1]
    assert started.text == "Just kicked off a workflow with ID: " + instance_id
    status = wait_for(
        lambda: (r := httpx.get(f"{base}/status/{instance_id}", timeout=30).json())["status"] == "complete" and r,
        60,
        "the instance to complete",
    )
    assert status == {"status": "complete"}

    # Cloudflare's paths are the API's, the dashboard is under /cdn-cgi/stepstone/, the script name is the project's
    listed = httpx.get(base + "/client/v4/accounts/local/workflows", timeout=30).json()["result"]
    assert [(w["name"], w["script_name"]) for w in listed] == [("dag-workflow", "python-workflows")]
    page = httpx.get(base + "/cdn-cgi/stepstone/", timeout=30, follow_redirects=True)
    assert page.status_code == 200 and "dag-workflow" in page.text
    text = log.read_text()
    assert "Worker: " + base + "/ (every path but the API's)" in text
    assert "env.API_KEY: secret (.dev.vars)" in text

    # an edit restarts the child; a request sent meanwhile waits for the new code instead of failing
    source = (root / "src" / "entry.py").read_text()
    (root / "src" / "entry.py").write_text(source.replace("Use /start or", "Now use /start or"))
    wait_for(lambda: "entry.py changed: restarting the worker" in log.read_text(), 20, "the restart")
    after = wait_for(
        lambda: (r := httpx.get(base + "/", timeout=30)).text.startswith("Now use") and r, 60, "the new code"
    )
    assert after.status_code == 200
