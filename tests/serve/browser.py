"""A tiny headless-Chromium driver over the DevTools protocol (websocket-client), for page tests.

Debian's ``chromium`` runs headless with a DevTools port; the test picks files into a real
``<input type=file>`` (DOM.setFileInputFiles, what Puppeteer's upload does), evaluates
JavaScript and takes a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request

from tests.support import stop


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Page:
    def __init__(self, ws_url: str):
        import websocket

        self._ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self._ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expression} stayed false for {timeout:.0f} s")

    def navigate(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('files')")

    def pick_files(self, selector: str, paths: list[str]) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", files=paths, nodeId=node)

    def screenshot(self, path: str) -> str:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._ws.close()


@contextlib.contextmanager
def headless_page(profile_dir: str, width: int = 1000, height: int = 900):
    """Starts headless Chromium; yields a ``Page`` on about:blank."""
    from tlp.components.lib.serving import free_port

    port = free_port()
    process = subprocess.Popen(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile_dir}",
         f"--remote-debugging-port={port}", "--remote-allow-origins=*", f"--window-size={width},{height}",
         "--hide-scrollbars", "--force-device-scale-factor=1", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    page = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    targets = [t for t in json.loads(response.read()) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("headless Chromium did not start")
            time.sleep(0.2)
        page = Page(targets[0]["webSocketDebuggerUrl"])
        yield page
    finally:
        if page is not None:
            page.close()
        stop(process)
