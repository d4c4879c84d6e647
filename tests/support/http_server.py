"""A real threaded HTTP server on 127.0.0.1 for download tests, able to misbehave on request.

Usage::

    from tests.support.http_server import FileServer

    @pytest.fixture
    def server():
        with FileServer() as s:          # ephemeral port, started; stopped on exit
            yield s

    def test_something(server):
        url = server.add("/files/model.ckpt", b"...")          # serve bytes, returns the full URL
        server.misbehave("/files/model.ckpt", drop_after=100, times=1)   # first GET breaks after 100 bytes
        ...
        assert server.count("/files/model.ckpt") == 2
        assert server.requests_for("/files/model.ckpt")[1].headers.get("Range") == "bytes=100-"

What it does:

* ``add(path, data, content_type=...)`` serves ``data`` at ``path`` (query strings are ignored when matching),
  with ``Content-Length`` and byte ``Range`` support (``206`` + ``Content-Range``; ``416`` past the end).
* ``add_page(path, html)`` serves a ``text/html`` page; ``route(path, handler)`` calls
  ``handler(request) -> (status, headers, body)`` for full control (for example a Google Drive confirmation page
  whose form points back at the server).
* ``misbehave(path, ...)`` makes the next ``times`` requests of ``path`` (every request when ``times=None``):
  ``status=404|403|500|...`` answer that status; ``drop_after=N`` announce the full length, send ``N`` body bytes
  and close the connection; ``ignore_range=True`` answer ``200`` with the whole file even to ``Range`` requests;
  ``corrupt=True`` flip one byte in the middle (same length); ``delay=s`` pause ``s`` seconds after each 64 KiB
  chunk (to make transfers overlap). Options combine.
* ``requests`` records every request (method, path, query, headers); ``count(path)`` counts GETs of a path.
* ``stop()`` shuts the server down (URLs then refuse connections); ``start()`` starts it again on a new port.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_CHUNK = 64 * 1024


@dataclass
class Request:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Behaviour:
    """How to misbehave for a path (see :meth:`FileServer.misbehave`)."""

    status: int | None = None
    drop_after: int | None = None
    ignore_range: bool = False
    corrupt: bool = False
    delay: float = 0.0
    times: int | None = None


@dataclass
class _Entry:
    data: bytes
    content_type: str = "application/octet-stream"
    behaviours: list[Behaviour] = field(default_factory=list)


Handler = Callable[[Request], "tuple[int, dict[str, str], bytes]"]


class FileServer:
    """A threaded HTTP server on 127.0.0.1 serving in-memory files (see the module docstring)."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._routes: dict[str, Handler] = {}
        self.requests: list[Request] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for path, data in (files or {}).items():
            self.add(path, data)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> FileServer:
        """Start serving on a free port of 127.0.0.1 (no-op when running)."""
        if self._httpd is not None:
            return self
        server = self

        class _Handler(_RequestHandler):
            owner = server

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; connections to the old port are refused afterwards."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Full URL of ``path`` (which starts with ``/``)."""
        return self.base_url + path

    # -- content -----------------------------------------------------------------------------------------------

    def add(self, path: str, data: bytes, *, content_type: str = "application/octet-stream") -> str:
        """Serve ``data`` at ``path``; return its URL (when running) or the path."""
        if not path.startswith("/"):
            raise ValueError("paths start with '/'")
        with self._lock:
            self._entries[path] = _Entry(bytes(data), content_type)
        return self.url(path) if self._httpd is not None else path

    def add_page(self, path: str, html: str) -> str:
        """Serve an HTML page at ``path``."""
        return self.add(path, html.encode("utf-8"), content_type="text/html; charset=utf-8")

    def route(self, path: str, handler: Handler) -> str:
        """Answer requests of ``path`` with ``handler(request) -> (status, headers, body)``."""
        with self._lock:
            self._routes[path] = handler
        return self.url(path) if self._httpd is not None else path

    def remove(self, path: str) -> None:
        """Stop serving ``path`` (it then answers 404)."""
        with self._lock:
            self._entries.pop(path, None)
            self._routes.pop(path, None)

    def misbehave(
        self,
        path: str,
        *,
        status: int | None = None,
        drop_after: int | None = None,
        ignore_range: bool = False,
        corrupt: bool = False,
        delay: float = 0.0,
        times: int | None = 1,
    ) -> None:
        """Misbehave on the next ``times`` requests of ``path`` (``None``: on all of them).

        Behaviours queue: two calls with ``times=1`` affect the first and the second request.
        """
        with self._lock:
            entry = self._entries.setdefault(path, _Entry(b""))
            entry.behaviours.append(Behaviour(status, drop_after, ignore_range, corrupt, delay, times))

    # -- inspection --------------------------------------------------------------------------------------------

    def requests_for(self, path: str, method: str = "GET") -> list[Request]:
        """The recorded requests of ``path`` with ``method``, in order."""
        with self._lock:
            return [r for r in self.requests if r.path == path and r.method == method]

    def count(self, path: str, method: str = "GET") -> int:
        """How many ``method`` requests ``path`` received."""
        return len(self.requests_for(path, method))

    # -- used by the handler -----------------------------------------------------------------------------------

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _lookup(self, path: str) -> tuple[Handler | None, _Entry | None, Behaviour | None]:
        with self._lock:
            if path in self._routes:
                return self._routes[path], None, None
            entry = self._entries.get(path)
            if entry is None:
                return None, None, None
            behaviour = None
            if entry.behaviours:
                behaviour = entry.behaviours[0]
                if behaviour.times is not None:
                    behaviour.times -= 1
                    if behaviour.times <= 0:
                        entry.behaviours.pop(0)
            return None, entry, behaviour


class _RequestHandler(BaseHTTPRequestHandler):
    owner: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the default logging
        return

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _send_simple(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def _serve(self, *, head: bool) -> None:
        parts = urlsplit(self.path)
        request = Request(
            self.command, parts.path, parse_qs(parts.query), {k: v for k, v in self.headers.items()}
        )
        self.owner._record(request)
        handler, entry, behaviour = self.owner._lookup(parts.path)
        if handler is not None:
            status, headers, body = handler(request)
            self._send_simple(status, body, headers)
            return
        if entry is None:
            self._send_simple(404, b"Not Found")
            return
        b = behaviour or Behaviour()
        if b.status is not None:
            self._send_simple(b.status, f"HTTP {b.status} (misbehaving on purpose)".encode())
            return
        data = entry.data
        if b.corrupt and data:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        total = len(data)
        start, end = 0, total - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header and not b.ignore_range:
            try:
                unit, _, spec = range_header.partition("=")
                first, _, last = spec.partition("-")
                if unit.strip() != "bytes" or "," in spec:
                    raise ValueError(range_header)
                start = int(first)
                end = min(int(last), total - 1) if last.strip() else total - 1
            except ValueError:
                self._send_simple(400, b"Bad Range")
                return
            if start >= total:
                self._send_simple(416, b"Range Not Satisfiable", {"Content-Range": f"bytes */{total}"})
                return
            status = 206
        body = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", entry.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Connection", "close")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        self.close_connection = True
        if head:
            return
        limit = len(body) if b.drop_after is None else min(b.drop_after, len(body))
        sent = 0
        try:
            while sent < limit:
                chunk = body[sent : min(sent + _CHUNK, limit)]
                self.wfile.write(chunk)
                sent += len(chunk)
                if b.delay:
                    self.wfile.flush()
                    threading.Event().wait(b.delay)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        if b.drop_after is not None and limit < len(body):
            try:  # close abruptly: the client sees fewer bytes than Content-Length announced
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
