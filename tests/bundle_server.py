"""A real HTTP server on 127.0.0.1 serving bundle archives, able to misbehave on purpose."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    """What the test server does: its files, and how it misbehaves."""

    files: dict[str, bytes] = field(default_factory=dict)
    truncate_first: int = 0  # this many responses send half the body, then hang up
    unavailable_first: int = 0  # this many responses are 503
    requests: list[str] = field(default_factory=list)


def make_handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            behaviour.requests.append(self.path)
            body = behaviour.files.get(self.path)
            if behaviour.unavailable_first > 0:
                behaviour.unavailable_first -= 1
                self.send_error(503)
                return
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if behaviour.truncate_first > 0:
                behaviour.truncate_first -= 1
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(behaviour: Behaviour, port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(behaviour))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
