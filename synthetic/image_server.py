"""A real threaded HTTP server on 127.0.0.1 that serves registered payloads, for download tests.

Routes are byte bodies with a status, content type, optional delay and extra headers; unknown paths get a
404. Every request is logged (path, time, whether it was answered) so a test can assert which URLs a
downloader asked for. The server can be stopped and started again on the same port, or told to die after
``n`` requests (the listening socket closes, later connections are refused), to simulate a host that
goes away in the middle of a run and comes back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

NOAI_HEADERS = {"X-Robots-Tag": "noai, noimageai"}


@dataclass(frozen=True)
class Route:
    """What the server answers on one path."""

    body: bytes
    content_type: str = "image/jpeg"
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestRecord:
    """One request the server received; ``answered`` is False when it was dropped by a dying server."""

    path: str
    time: float
    answered: bool


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        route, generation = owner._on_request(self.path)
        if route.delay_s:
            time.sleep(route.delay_s)
        if not owner._is_live(generation):
            self.close_connection = True
            return
        try:
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(route.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: ImageServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:  # quiet
        return


_NOT_FOUND = Route(b"not found", content_type="text/plain", status=404)


class ImageServer:
    """Serve registered payloads on ``http://127.0.0.1:<port>/<path>``; usable as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._routes: dict[str, Route] = {}
        self._log: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._dead = threading.Event()
        self._remaining: int | None = None
        self._generation = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- routes -------------------------------------------------------------------------------
    def add(
        self,
        path: str,
        body: bytes,
        content_type: str = "image/jpeg",
        status: int = 200,
        delay_s: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Register (or replace) what ``path`` answers; returns its URL."""
        path = "/" + path.lstrip("/")
        with self._lock:
            self._routes[path] = Route(body, content_type, status, delay_s, dict(headers or {}))
        return self.url(path)

    def add_image(self, path: str, jpeg: bytes) -> str:
        """A JPEG image answered with 200."""
        return self.add(path, jpeg)

    def add_not_found(self, path: str) -> str:
        """An explicit 404 (unregistered paths answer 404 too)."""
        return self.add(path, _NOT_FOUND.body, _NOT_FOUND.content_type, 404)

    def add_html(self, path: str, html: bytes = b"<html><body>not an image</body></html>") -> str:
        """A 200 answer whose body is HTML, not an image."""
        return self.add(path, html, content_type="text/html")

    def add_slow(self, path: str, body: bytes, delay_s: float) -> str:
        """An image answered only after ``delay_s`` seconds."""
        return self.add(path, body, delay_s=delay_s)

    def add_noai(self, path: str, body: bytes) -> str:
        """An image whose response carries ``X-Robots-Tag: noai, noimageai`` (an opt-out)."""
        return self.add(path, body, headers=NOAI_HEADERS)

    def url(self, path: str) -> str:
        """Full URL of ``path`` (the server must have a port, i.e. have been started once)."""
        if not self.port:
            raise RuntimeError("the server has no port yet: start it first")
        return f"http://{self.host}:{self.port}/{path.lstrip('/')}"

    # --- request log --------------------------------------------------------------------------
    def _on_request(self, raw_path: str) -> tuple[Route, int | None]:
        """Log a request; returns its route and the server generation that answers it (None: drop it)."""
        path = raw_path.split("?", 1)[0]
        with self._lock:
            route = self._routes.get(path, _NOT_FOUND)
            answer = not self._dead.is_set()
            if answer and self._remaining is not None:
                answer = self._remaining > 0
                self._remaining -= 1
                if self._remaining == 0:
                    self._dead.set()
                    detached = self._detach()
                    threading.Thread(target=self._shutdown, args=detached, daemon=True).start()
            self._log.append(RequestRecord(path, time.time(), answer))
            return route, self._generation if answer else None

    def _is_live(self, generation: int | None) -> bool:
        with self._lock:
            return generation == self._generation

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, in arrival order."""
        with self._lock:
            return list(self._log)

    def requested_paths(self, since: float = 0.0) -> list[str]:
        """Paths requested at or after ``since`` (a ``time.time()`` value), in arrival order."""
        return [r.path for r in self.requests if r.time >= since]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> ImageServer:
        """Start listening (again on the same port after a stop or a death)."""
        if self._server is not None:
            return self
        with self._lock:
            self._remaining = None
            self._generation += 1
            self._dead.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def die_after(self, n_requests: int) -> None:
        """Answer ``n_requests`` more requests, then close the listening socket (connections refused).

        Requests already accepted are still answered; later ones are dropped or refused.
        """
        with self._lock:
            self._remaining = n_requests
            if n_requests <= 0:
                self._dead.set()
        if n_requests <= 0:
            self._close()

    @property
    def alive(self) -> bool:
        return self._server is not None and not self._dead.is_set()

    def _detach(self) -> tuple[_Server | None, threading.Thread | None]:
        """Take the running server out of this object (call with the lock held)."""
        detached = self._server, self._thread
        self._server, self._thread = None, None
        return detached

    @staticmethod
    def _shutdown(server: _Server | None, thread: threading.Thread | None) -> None:
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _close(self) -> None:
        with self._lock:
            detached = self._detach()
        self._shutdown(*detached)

    def stop(self) -> None:
        """Stop listening; requests in flight are dropped."""
        with self._lock:
            self._dead.set()
            self._generation += 1
        self._close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
