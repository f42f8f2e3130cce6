"""Real HTTP servers on 127.0.0.1 for the backend tests.

- `llama_server`: a session fixture running llama-cpp-python's OpenAI-compatible server on the
  bundled SmolLM2 GGUF; yields its base URL ("http://127.0.0.1:PORT/v1").
- `Proxy`: a reverse proxy of our own (threaded http.server) that counts every request it receives,
  tracks how many are in flight at once, and can answer the first N requests with an error status
  before forwarding the rest. Requests really travel: client -> proxy -> llama.cpp server.
"""

from __future__ import annotations

import atexit
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

SERVER_MODEL = "smollm2"  # the model name clients send; llama.cpp serves its one model whatever the name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0, name: str = "llama.cpp") -> None:
    """Until the OpenAI-compatible server at `url` answers /models; its log's tail in the error otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


_RUNNING: dict[str, object] = {}  # one server per test process, however many modules ask for it


def start_llama_server(log_dir: Path) -> str:
    """Start (once) the llama.cpp server on a free port; return its base URL."""
    if "url" in _RUNNING:
        return _RUNNING["url"]  # type: ignore[return-value]
    from neuroscribe.models import llama_server_command

    port = free_port()
    log = log_dir / "server.log"
    cmd = llama_server_command(port)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    atexit.register(_stop, proc)  # also covers an interrupted session
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(url, proc, log)
    except BaseException:
        _stop(proc)
        raise
    _RUNNING.update(url=url, proc=proc)
    return url


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """Base URL of a llama-cpp-python server on the bundled SmolLM2 GGUF (started once per session)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not installed: pip install 'neuroscribe[server]' to run the HTTP backend tests")
    yield start_llama_server(tmp_path_factory.mktemp("llama_server"))
    proc = _RUNNING.pop("proc", None)
    _RUNNING.pop("url", None)
    if proc is not None:
        _stop(proc)  # type: ignore[arg-type]


class Proxy:
    """Counting reverse proxy to `upstream` (a base URL like http://127.0.0.1:P/v1)."""

    def __init__(
        self,
        upstream: str,
        fail_first: int = 0,
        fail_status: int = 500,
        delay: float = 0.0,
        fail_message: str = "injected failure",
        fault=None,
    ):
        """`fault(body) -> mode | None` picks a failure per request, every time it is sent (retries too):
        "500", "429" (error statuses), "garbage" (200 with a body that is not JSON), "empty" (200 with
        `{}`), "hang" (answers after `hang_seconds`); None forwards it."""
        self.upstream = urlsplit(upstream)
        self.fail_first, self.fail_status, self.delay = fail_first, fail_status, delay
        self.fault, self.hang_seconds = fault, 30.0
        self.faults: list[str] = []
        self.fail_body = json.dumps({"error": {"message": fail_message, "type": "injected"}}).encode()
        self.received = 0  # every request that reached the proxy, failed ones included
        self.forwarded = 0  # requests answered by the upstream server
        self.in_flight = 0
        self.max_in_flight = 0
        self.paths: list[str] = []
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # a killed client is expected here
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.upstream.path}"

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                self._relay()

            def do_POST(self) -> None:
                self._relay()

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with proxy._lock:
                    proxy.received += 1
                    proxy.paths.append(self.path)
                    proxy.auth_headers.append(self.headers.get("authorization", ""))
                    fail = proxy.fail_first > 0
                    if fail:
                        proxy.fail_first -= 1
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                mode = proxy.fault(body) if proxy.fault is not None and not fail else None
                if mode:
                    with proxy._lock:
                        proxy.faults.append(mode)
                try:
                    if proxy.delay:
                        time.sleep(proxy.delay)
                    if mode == "hang":
                        time.sleep(proxy.hang_seconds)
                    if fail or mode in ("500", "429"):
                        status = proxy.fail_status if fail else int(mode)
                        payload, ctype = proxy.fail_body, "application/json"
                    elif mode == "garbage":
                        status, payload, ctype = 200, b"<html>upstream hiccup</html>", "application/json"
                    elif mode == "empty":
                        status, payload, ctype = 200, b"{}", "application/json"
                    else:
                        status, payload, ctype = self._forward(body)
                        with proxy._lock:
                            proxy.forwarded += 1
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                if status == 429:
                    self.send_header("retry-after", "0")
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes) -> tuple[int, bytes, str]:
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=300)
                try:
                    headers = {"content-type": self.headers.get("content-type", "application/json")}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    return response.status, response.read(), response.getheader("content-type", "application/json")
                finally:
                    conn.close()

        return Handler


def dead_url() -> str:
    """A base URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"
