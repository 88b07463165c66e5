"""The docker tier's recording proxy, with docker-py's real requests and a small stand-in engine
on a unix socket: runs in every tier (no Docker engine needed)."""

from __future__ import annotations

import json
import os
import socketserver
import tempfile
import threading
from http.server import BaseHTTPRequestHandler

import docker

from tests.docker.engine_proxy import RecordingEngineProxy


class _Engine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: several requests on one connection, as docker-py sends

    def do_GET(self):
        if self.path.endswith("/_ping"):
            return self._reply(200, b"OK", "text/plain")
        self._reply(200, json.dumps({"Id": "c1", "State": {"Running": False}}).encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.bodies.append((self.path, body))
        if "/containers/create" in self.path:
            return self._reply(201, json.dumps({"Id": "c1", "Warnings": []}).encode())
        self._reply(204, b"")

    def _reply(self, status, payload, kind="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port) client address


def test_every_create_body_is_kept_as_the_engine_got_it_and_the_rest_passes_through():
    with tempfile.TemporaryDirectory() as scratch:
        engine = _UnixServer(os.path.join(scratch, "engine.sock"), _Engine)
        engine.bodies = []
        threading.Thread(target=engine.serve_forever, daemon=True).start()
        try:
            with RecordingEngineProxy(engine.server_address) as proxy:
                client = docker.APIClient(base_url=proxy.docker_host, version="1.41")
                for step in ("prep", "train"):
                    created = client.create_container(
                        "tlp/tlp:1", ["python", "--function_to_execute", step], user="4321:4321",
                        host_config=client.create_host_config(binds=["/tmp/x:/tmp/x:rw"], network_mode="none"),
                    )
                    client.start(created["Id"])
                assert client.inspect_container("c1")["Id"] == "c1"
                client.close()
        finally:
            engine.shutdown()
            engine.server_close()

    made = [(b["Cmd"][-1], b["User"], b["HostConfig"]["NetworkMode"], b["HostConfig"]["Binds"]) for b in proxy.creates]
    assert made == [
        ("prep", "4321:4321", "none", ["/tmp/x:/tmp/x:rw"]),
        ("train", "4321:4321", "none", ["/tmp/x:/tmp/x:rw"]),
    ]
    # The engine got the same bytes: both creates, and the starts between and after them.
    assert [json.loads(body) for path, body in engine.bodies if "/containers/create" in path] == proxy.creates
    assert [path.rsplit("/", 1)[-1] for path, _ in engine.bodies] == ["create", "start", "create", "start"]
