"""Real notification targets on 127.0.0.1: an HTTP server taking Apprise's JSON webhook, an SMTP
server (aiosmtpd), a port that refuses connections and one that accepts and never answers."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.watch_process import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refusing_url() -> str:
    """A JSON webhook URL on a port nothing listens on: every connection is refused."""
    return f"json://127.0.0.1:{free_port()}/"


class JsonReceiver:
    """Records every JSON body POSTed to it (`messages`: Apprise's {title, message, type})."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        received = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"json://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def texts(self) -> list[str]:
        return [f"{m.get('title', '')}\n{m.get('message', '')}" for m in list(self.messages)]

    def wait_for(self, needle: str, *, timeout: float = 20.0) -> str:
        return wait_until(lambda: next((t for t in self.texts() if needle in t), None), timeout,
                          f"a notification containing {needle!r}; got {self.texts()}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HangingServer:
    """Accepts connections and never answers; `open_connections` counts those still open (a
    client that gave up closes its end, which we see as EOF)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.closed = 0
        self._stop = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, seconds: int = 60) -> str:
        """Apprise's connect and read timeouts raised, so the send hangs that long."""
        return f"json://127.0.0.1:{self.port}/?cto={seconds}&rto={seconds}"

    @property
    def open_connections(self) -> int:
        return self.accepted - self.closed

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        self.closed += 1

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self._conns:
            conn.close()


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 keeping each message's bytes."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[bytes] = []
        received = self.messages

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                received.append(envelope.content)
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        self.url = (f"mailto://127.0.0.1:{self.port}?from=dms-reconciler@example.com"
                    "&to=postmaster@example.com&mode=insecure")

    def close(self) -> None:
        self.controller.stop()
