"""A webhook receiver for the benches, in a process of its own (``python -m
benchmarks.receiver``): it answers 200 to every POST and tells how many it got on
``GET /count``. In the bench's own process its threads would take the interpreter lock
from the publisher and the result polling, and the latency measured would be the
bench's. It prints its port on the first line of its output."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def serve() -> None:
    count = 0
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

        def do_POST(self) -> None:
            nonlocal count
            self.rfile.read(int(self.headers.get("content-length") or 0))
            with lock:
                count += 1
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            with lock:
                body = str(count).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


class CountingReceiver:
    """The receiver process: ``url`` to subscribe, ``count`` of POSTs received so far."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.receiver"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        port = int(self._process.stdout.readline())
        self._base = f"http://127.0.0.1:{port}"
        self.url = f"{self._base}/hook"

    @property
    def count(self) -> int:
        with urllib.request.urlopen(f"{self._base}/count", timeout=10) as response:
            return int(response.read())

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


if __name__ == "__main__":
    serve()
