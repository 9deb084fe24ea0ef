"""A local HTTP server standing in for dataset hosts, and archive builders for the data tests."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder; ``/slow/...`` stalls; records request paths."""

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.startswith("/slow/"):
            time.sleep(1.5)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclasses.dataclass
class Server:
    root: Path
    url: str
    requests: list[str]


@contextmanager
def serve_folder(root: Path) -> Iterator[Server]:
    """Serve ``root`` on 127.0.0.1 (a free port) until the block ends."""
    requests: list[str] = []
    handler = type("Handler", (QuietHandler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=root))
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def zip_folder(folder: Path, archive: Path, top: str) -> None:
    """Zip ``folder`` under the top-level folder ``top`` ("": none), directory entries included."""
    prefix = f"{top}/" if top else ""
    with zipfile.ZipFile(archive, "w") as zipped:
        if top:
            zipped.writestr(prefix, "")
        for path in sorted(folder.rglob("*")):
            name = f"{prefix}{path.relative_to(folder).as_posix()}"
            if path.is_dir():
                zipped.writestr(f"{name}/", "")
            else:
                zipped.write(path, name)
