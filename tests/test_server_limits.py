"""Hostile clients against a real server process over real sockets: ``/health`` under the DNS-rebinding rule,
request deadlines (idle sockets, slow headers, slow bodies, a ``Content-Length`` whose bytes never come), the
connection cap, and refusals and cut-off bodies logged once, without a traceback.

The deadlines are set short here (``ConnectionLimits``); every assertion is about what the server did (closed
the socket, answered 408/503, wrote one log line), never about how long it took.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from stepstone.server import ConnectionLimits
from tests.server_process import PIDS, running_server

LIMITS = {"header_timeout": 0.5, "body_timeout": 0.5, "keep_alive": 1, "max_connections": 20}
ADMIN = "admin-token-0123456789"
ACME = "acme-token-0123456789"
TOKENS = [{"token": ADMIN, "accounts": ["*"]}, {"token": ACME, "accounts": ["acme"]}]
CREATE = "/client/v4/accounts/acme/workflows/quick/instances"


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("open"), limits=LIMITS) as base:
        yield base


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("tokens")
    with running_server(tmp, tokens=TOKENS, limits=LIMITS) as base:
        yield base, tmp


def _connect(base: str) -> socket.socket:
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=20)
    return sock


def _closed_by_server(sock: socket.socket) -> bytes:
    """Read until the server closes the socket; what it sent before closing."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _log(tmp: Path, base: str) -> str:
    return (tmp / f"server-{urlsplit(base).port}.log").read_text()


def _wait_for_log(tmp: Path, base: str, needle: str) -> str:
    for _ in range(200):
        text = _log(tmp, base)
        if needle in text:
            return text
        time.sleep(0.05)
    return _log(tmp, base)


# -- /health ----------------------------------------------------------------------------------------------
def test_health_on_an_open_server_follows_the_host_and_origin_rule(open_server: str) -> None:
    mine = httpx.get(open_server + "/health").json()["result"]
    assert mine["status"] == "ok" and "version" in mine and "workflows" in mine
    for headers in (
        {"host": "evil.example"},
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"host": "rebound.attacker.test:8787", "origin": "http://rebound.attacker.test:8787"},
    ):
        answer = httpx.get(open_server + "/health", headers=headers)
        assert answer.status_code == 403, headers
        assert "version" not in answer.text and "workflows" not in answer.text
        assert answer.json()["errors"][0]["code"] == 10000


def test_health_with_tokens_tells_details_only_to_an_all_accounts_token(token_server: tuple[str, Path]) -> None:
    base, _ = token_server
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {ACME}"}):
        answer = httpx.get(base + "/health", headers=headers)
        assert answer.status_code == 200 and answer.json()["result"] == {"status": "ok"}, headers
    full = httpx.get(base + "/health", headers={"authorization": f"Bearer {ADMIN}"}).json()["result"]
    assert set(full) == {"status", "version", "workflows"}


# -- deadlines ----------------------------------------------------------------------------------------------
def test_a_socket_that_sends_nothing_is_closed(open_server: str) -> None:
    with _connect(open_server) as sock:
        assert _closed_by_server(sock) == b""


def test_headers_sent_a_line_at_a_time_are_cut_off(open_server: str) -> None:
    with _connect(open_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        cut = False
        for i in range(200):  # 200 lines at 0.05 s apart: far past the 0.5 s header deadline
            try:
                sock.sendall(b"x-slow-%d: 1\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            sock.settimeout(0.05)
            try:
                if sock.recv(1) == b"":
                    cut = True
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                cut = True
                break
        assert cut, "the server kept a request head open that never completed"


def test_a_keep_alive_connection_must_send_its_next_head_in_time(open_server: str) -> None:
    with _connect(open_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        first = b""
        while b'"status":"ok"' not in first:
            first += sock.recv(65536)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n")  # then never the blank line
        assert _closed_by_server(sock) == b""


def test_a_content_length_that_never_arrives_is_answered_408(token_server: tuple[str, Path]) -> None:
    base, tmp = token_server
    with _connect(base) as sock:
        sock.sendall(
            f"POST {CREATE} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ACME}\r\n"
            'content-type: application/json\r\ncontent-length: 500\r\n\r\n{"instance_id": '.encode()
        )
        answer = _closed_by_server(sock)  # answered, then closed: the unread body makes the connection unusable
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    error = json.loads(body)["errors"][0]
    assert error["code"] == 10004 and "did not arrive within 0.5s" in error["message"]
    text = _wait_for_log(tmp, base, "did not arrive")
    assert text.count("did not arrive within") == 1 and "Traceback" not in text


def test_a_body_sent_a_byte_at_a_time_is_cut_off(open_server: str) -> None:
    with _connect(open_server) as sock:
        sock.sendall(f"POST {CREATE} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 4000\r\n\r\n".encode())
        answer = b""
        sock.settimeout(0.05)
        for _ in range(4000):
            try:
                sock.sendall(b" ")
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if b"\r\n\r\n" in answer:
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_a_body_that_no_route_reads_cannot_hold_the_connection(open_server: str) -> None:
    with _connect(open_server) as sock:  # /health answers without reading; the body keeps trickling in
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 100000\r\n\r\n")
        answer, closed = b"", False
        sock.settimeout(0.05)
        for _ in range(2000):  # 100 s of one byte per 0.05 s: far past twice the 0.5 s body deadline
            try:
                sock.sendall(b"x")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and closed


# -- the connection cap ---------------------------------------------------------------------------------------
def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors in /proc")
def test_hundreds_of_idle_sockets_are_capped_and_released(tmp_path: Path) -> None:
    cap = 20
    with running_server(tmp_path, limits={"header_timeout": 60, "max_connections": cap}) as base:
        pid = PIDS[base]
        before = _open_fds(pid)
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(_connect(base)) for _ in range(300)]
            answers = {s: b"" for s in socks}
            with selectors.DefaultSelector() as sel:
                for s in socks:
                    sel.register(s, selectors.EVENT_READ)
                closed: set[socket.socket] = set()
                deadline = time.monotonic() + 30
                while len(closed) < 300 - cap and time.monotonic() < deadline:
                    for key, _ in sel.select(timeout=0.5):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        chunk = sock.recv(65536)
                        answers[sock] += chunk
                        if not chunk:
                            closed.add(sock)
                            sel.unregister(sock)
            held = [s for s in socks if s not in closed]
            # Exactly `cap` sockets are held (idle, within their header deadline), every other one refused.
            assert len(held) == cap and all(answers[s] == b"" for s in held)
            assert all(answers[s].startswith(b"HTTP/1.1 503") for s in closed)
            assert b"too many open connections" in answers[next(iter(closed))]
            assert _open_fds(pid) <= before + cap + 2  # the refused ones hold nothing
        # The client side closed all of them: the server is back to serving, and holding nothing.
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health").status_code == 200 and _open_fds(pid) <= before + 2:
                    break
            time.sleep(0.05)
        assert httpx.get(base + "/health").status_code == 200
        assert _open_fds(pid) <= before + 2
        log = (tmp_path / f"server-{urlsplit(base).port}.log").read_text()
        assert log.count("refusing new connections") == 1  # once per burst, not once per socket


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="header_timeout must be a positive number"):
        ConnectionLimits(header_timeout=0)
    with pytest.raises(ValueError, match="max_connections must be at least 1"):
        ConnectionLimits(max_connections=0)


# -- logging -------------------------------------------------------------------------------------------------
def test_refusals_are_logged_once_without_a_traceback(token_server: tuple[str, Path]) -> None:
    base, tmp = token_server
    wrong = httpx.get(base + "/client/v4/accounts/acme/workflows/quick", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    other = httpx.get(base + "/client/v4/accounts/beta/workflows/quick", headers={"authorization": f"Bearer {ACME}"})
    assert other.status_code == 403
    members = httpx.get(base + "/client/v4/memberships")
    assert members.status_code == 401
    text = _wait_for_log(tmp, base, "/client/v4/memberships from")
    assert text.count("GET /client/v4/accounts/acme/workflows/quick from 127.0.0.1 refused (401)") == 1
    assert text.count("GET /client/v4/accounts/beta/workflows/quick from 127.0.0.1 refused (403)") == 1
    assert text.count("GET /client/v4/memberships from 127.0.0.1 refused (401)") == 1
    assert "WARNING" in text and "Traceback" not in text and "nope" not in text


def test_a_client_that_disconnects_mid_body_is_logged_once(token_server: tuple[str, Path]) -> None:
    base, tmp = token_server
    with _connect(base) as sock:
        sock.sendall(
            f"POST {CREATE}?mid-body HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ACME}\r\n"
            "content-length: 100000\r\n\r\n".encode()
            + b"{" * 1000
        )
        time.sleep(0.1)  # let the handler start reading the body, then go away
    text = _wait_for_log(tmp, base, "disconnected before sending")
    lines = [line for line in text.splitlines() if "disconnected before sending" in line]
    assert len(lines) == 1 and lines[0].startswith("INFO") and f"POST {CREATE} from 127.0.0.1" in lines[0]
    assert "Traceback" not in text
