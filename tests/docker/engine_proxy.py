"""A unix socket in front of the Docker engine's that keeps every container-create request.

The docker tier asserts on what each step's container was made with (image, user, network, the
bind mounts). Inspecting containers from a watch of the engine's events lost a race in CI: kfp's
DockerRunner creates them with ``auto_remove=True`` and a loaded machine removed some before
the inspection ("404 Not Found"). A client pointed at this socket (``DOCKER_HOST``) sends its
requests through it, so the body of every ``POST /containers/create`` is kept exactly as the
engine received it, however short the container's life.

Each connection is forwarded byte for byte in both directions; the client's side is read as HTTP
requests only to find the create bodies. A request this does not parse (a chunked body, a
connection upgraded for attach) turns the rest of that connection into plain copying."""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading

CREATE = re.compile(rb"^POST (/v[0-9.]+)?/containers/create(\?\S*)? HTTP/1\.[01]$")


def engine_socket_path() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise ValueError(f"the recording proxy fronts a unix socket, not DOCKER_HOST={host}")
    return host[len("unix://"):]


class RecordingEngineProxy:
    """``with RecordingEngineProxy() as proxy:`` point clients at ``proxy.docker_host``; the
    create requests' JSON bodies are in ``proxy.creates``, in the order the engine got them."""

    def __init__(self, engine: str | None = None):
        self.engine = engine or engine_socket_path()
        self.creates: list[dict] = []
        self._lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix="tlp-engine-proxy-")
        os.chmod(self._dir, 0o755)  # another user's client must reach the socket inside
        self.path = os.path.join(self._dir, "docker.sock")
        self.docker_host = f"unix://{self.path}"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        os.chmod(self.path, 0o666)
        self._server.listen(64)
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RecordingEngineProxy:
        self._accepting.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.close()
        self._accepting.join(timeout=5)
        os.unlink(self.path)
        os.rmdir(self._dir)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed by __exit__
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.engine)
        threading.Thread(target=_copy, args=(upstream, client), daemon=True).start()
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffered += data
                head, buffered = buffered.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
                if b"content-length" not in headers and (b"transfer-encoding" in headers or b"upgrade" in headers):
                    upstream.sendall(head + b"\r\n\r\n" + buffered)
                    _copy(client, upstream)  # not parsed further: plain bytes from here on
                    return
                length = int(headers.get(b"content-length", b"0"))
                while len(buffered) < length:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffered += data
                body, buffered = buffered[:length], buffered[length:]
                if CREATE.match(lines[0]):
                    with self._lock:
                        self.creates.append(json.loads(body))
                upstream.sendall(head + b"\r\n\r\n" + body)
                if b"upgrade" in headers:
                    if buffered:
                        upstream.sendall(buffered)
                    _copy(client, upstream)
                    return
        except OSError:
            return
        finally:
            _close(client, upstream)


def _copy(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        _close(source, target)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
