"""Test servers on 127.0.0.1: a fault-injecting HTTP proxy (in front of moto_server) and a static file server with
HTTP range requests (serving a shard folder).

The proxy reads each request's head, asks ``fault(method, path)`` what to do and then relays the request to the
upstream with ``Connection: close`` (one request per connection, so every request is seen and counted):

* ``None``: relay the whole response;
* ``"503"``: answer ``503 Service Unavailable`` itself (S3's "SlowDown" status) without asking the upstream;
* ``"cut"``: relay the first ``cut_bytes`` bytes of the response, then close the connection (mid-body);
* ``"stall"``: relay the first ``cut_bytes`` bytes, then send nothing more until the client gives up or the proxy
  closes (at most ``stall_s`` seconds).
"""

from __future__ import annotations

import http.server
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable

__all__ = ["FaultProxy", "RangeHTTPServer"]


def _read_head(sock: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > 1 << 20:
            return None
    return data


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        fault: Callable[[str, str], str | None],
        *,
        cut_bytes: int = 700,
        stall_s: float = 60.0,
    ) -> None:
        host, port = upstream.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.fault, self.cut_bytes, self.stall_s = fault, cut_bytes, stall_s
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, path without query) -> count
        self.faults: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._closed = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def hits(self, path_part: str, method: str | None = None) -> int:
        with self.lock:
            return sum(n for (m, p), n in self.requests.items() if path_part in p and method in (None, m))

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        up = None
        try:
            client.settimeout(30)
            head = _read_head(client)
            if head is None:
                return
            head_part, _, rest = head.partition(b"\r\n\r\n")
            lines = head_part.split(b"\r\n")
            method, target, _ = lines[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            headers = [ln for ln in lines[1:] if not ln.lower().startswith((b"connection:", b"keep-alive:"))]
            length = next(
                (int(ln.split(b":", 1)[1]) for ln in headers if ln.lower().startswith(b"content-length:")), 0
            )
            while len(rest) < length:
                chunk = client.recv(65536)
                if not chunk:
                    return
                rest += chunk
            action = self.fault(method, path)
            with self.lock:
                self.requests[(method, path)] += 1
                if action:
                    self.faults[action] += 1
            if action == "503":
                body = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>slow down</Message></Error>"
                head = (
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                )
                client.sendall(head if method == "HEAD" else head + body)  # a HEAD answer carries no body
                return
            up = socket.create_connection(self.upstream, timeout=30)
            up.sendall(b"\r\n".join([lines[0], *headers, b"Connection: close"]) + b"\r\n\r\n" + rest)
            sent = 0
            while True:
                data = up.recv(65536)
                if not data:
                    return
                if action in ("cut", "stall") and sent + len(data) > self.cut_bytes:
                    client.sendall(data[: self.cut_bytes - sent])
                    if action == "stall":
                        self._closed.wait(self.stall_s)
                    return
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (client, up):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()

    def close(self) -> None:
        self._closed.set()
        self.sock.close()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` plus single ``Range: bytes=a-b`` requests (206), which fsspec's HTTP reads use."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        a, _, b = rng.removeprefix("bytes=").partition("-")
        start = int(a) if a else max(0, size - int(b))
        end = min(size - 1, int(b)) if a and b else size - 1
        if start >= size:
            self.send_error(416)
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by the base class's copyfile caller
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return _Limited(f, end - start + 1)


class _Limited:
    def __init__(self, f, n: int) -> None:
        self.f, self.n = f, n

    def read(self, size: int = -1) -> bytes:
        if self.n <= 0:
            return b""
        data = self.f.read(self.n if size < 0 else min(size, self.n))
        self.n -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


class RangeHTTPServer:
    """A threaded static HTTP server for ``folder`` on 127.0.0.1 (``.url``); ``close()`` stops it."""

    def __init__(self, folder: str) -> None:
        handler = lambda *a, **k: _RangeHandler(*a, directory=folder, **k)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
