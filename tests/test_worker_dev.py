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


SERVE_PY = """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/boom"):
            raise ValueError("no")
        return Response.json({"hello": self.env.WHO, "url": request.url})
"""


@pytest.mark.parametrize("api_only", [False, True])
def test_serve_answers_with_the_workers_fetch_unless_api_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_only: bool
) -> None:
    (tmp_path / "entry.py").write_text(SERVE_PY)
    (tmp_path / "wrangler.toml").write_text('name = "svc"\nmain = "entry.py"\n[vars]\nWHO = "world"\n')
    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--api-only"] if api_only else []
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepstone.cli", "serve", "--port", str(port), *args],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: (r := get(base + "/health")) is not None and r.status_code == 200, 60, "serve")
            home = httpx.get(base + "/", timeout=30, follow_redirects=True)
            if api_only:
                assert "stepstone" in home.text and home.headers["content-type"].startswith("text/html")
            else:
                assert home.json() == {"hello": "world", "url": base + "/"}
                boom = httpx.get(base + "/boom", timeout=30)
                assert boom.status_code == 500 and "ValueError" not in boom.text
                dashboard = httpx.get(base + "/cdn-cgi/stepstone/", timeout=30, follow_redirects=True)
                assert dashboard.status_code == 200 and "/cdn-cgi/stepstone/dashboard/static/" in dashboard.text
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
