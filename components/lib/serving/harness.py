"""Running a server and waiting until it is ready: on a thread of this process, or as its own
process (what infra validation, the tests and the serving benchmark start)."""

from __future__ import annotations

import contextlib
import threading
import time

from tlp.components.lib.serving.app import uvicorn_config
from tlp.components.lib.specs import ServiceError


@contextlib.contextmanager
def running_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0):
    """Serves ``app`` on a background thread of this process; yields its base URL."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn_config(app, host, sock.getsockname()[1], "warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tlp-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServiceError(f"the in-process server on {host}:{port} did not start within {timeout:.0f} s.")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, model_name: str, process=None, timeout: float = 180.0) -> None:
    """Polls the model's readiness route until it answers 200; raises with the
    reason (a ``ServiceError``) if the process ends first or the time runs out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"the server exited with status {process.returncode} before it was ready; its log "
                               "says why.")
        try:
            with urllib.request.urlopen(f"{url}/v1/models/{model_name}", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise ServiceError(f"the server at {url} was not ready after {timeout:.0f} s; its log says why.")
        time.sleep(0.2)


@contextlib.contextmanager
def server_process(command: list[str], url: str, model_name: str, log_path: str, timeout: float = 180.0,
                   env: dict | None = None):
    """Runs a server command (e.g. ``tlp serve DIR --port P``), waits until its model is ready,
    yields the ``subprocess.Popen``; stops it with SIGTERM (then SIGKILL) afterwards. Output goes
    to ``log_path``."""
    import subprocess

    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_ready(url, model_name, process, timeout)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except OSError:
        return ""
