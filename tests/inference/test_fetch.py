"""The SSRF-safe URL fetcher, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import functools
import gzip
import ipaddress
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlparse

import pytest

from imgclf.errors import FetchError, ForbiddenURLError, ImageTooLargeError
from imgclf.inference.fetch import (
    FetchPolicy,
    fetch_url,
    fetch_url_async,
    is_forbidden_address,
)
from imgtools import trickle

BODY = b"\x89PNG fake image body" * 10


class _Handler(BaseHTTPRequestHandler):
    """Routes: /img, /host (echoes Host), /redirect?to=URL, /loop, /big[-chunked], /slow."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Transfer-Encoding" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parsed = urlparse(self.path)
        query = parse_qs(parsed.query)
        if parsed.path == "/img":
            self._send(200, BODY, {"Content-Type": "image/png"})
        elif parsed.path == "/host":
            self._send(200, self.headers.get("Host", "").encode())
        elif parsed.path == "/redirect":
            self._send(302, b"", {"Location": query["to"][0]})
        elif parsed.path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif parsed.path == "/big":
            self._send(200, b"x" * 5000)
        elif parsed.path == "/big-chunked":
            self._send_chunked(b"x" * 1000, count=10)
        elif parsed.path in HOSTILE:
            HOSTILE[parsed.path](self)
        elif parsed.path == "/slow":
            time.sleep(2.0)
            self._send(200, BODY)
        else:
            self._send(404, b"not found")

    def _send_chunked(self, chunk: bytes, count: int) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for _ in range(count):
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


@functools.cache
def gzip_twice(data: bytes) -> bytes:
    return gzip.compress(gzip.compress(data, 9), 9)


def _gzip_bomb(handler: _Handler) -> None:
    """64 MiB of zeros, gzipped twice: about 200 bytes on the wire."""
    body = gzip_twice(bytes(64 << 20))
    handler._send(200, body, {"Content-Encoding": "gzip, gzip"})


def _gzip_image(handler: _Handler) -> None:
    handler._send(200, gzip_twice(BODY), {"Content-Encoding": "gzip, gzip"})


def _brotli(handler: _Handler) -> None:
    handler._send(200, BODY, {"Content-Encoding": "br"})


def _trickle(handler: _Handler, head: bytes) -> None:
    """Send ``head`` then one more byte every 50 ms, until the client goes away (or 20 s)."""
    trickle(handler.wfile, head, every_s=0.05, count=400)


HOSTILE: dict[str, Callable[[_Handler], None]] = {
    "/gzip-bomb": _gzip_bomb,
    "/gzip-image": _gzip_image,
    "/br": _brotli,
    "/trickle-headers": lambda h: _trickle(h, b"HTTP/1.1 200 OK\r\nX-Slow: "),
    "/trickle-body": lambda h: _trickle(h, b"HTTP/1.1 200 OK\r\nContent-Length: 9999\r\n\r\n"),
}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


LOCAL = FetchPolicy(allow_loopback=True)


def test_fetches_from_allowed_local_server(server: str) -> None:
    assert fetch_url(f"{server}/img", LOCAL) == BODY


def test_async_fetch_matches_sync(server: str) -> None:
    assert asyncio.run(fetch_url_async(f"{server}/img", LOCAL)) == BODY


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "/relative/path.jpg",
        "http://",
        "http://" + "a" * 5000 + ".com/",
    ],
)
def test_refuses_bad_schemes_and_malformed_urls(url: str) -> None:
    with pytest.raises(ForbiddenURLError):
        fetch_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.1.2.3:8080/",
        "http://[::1]/",
        "http://localhost/",
        "http://0.0.0.0/",
        "http://10.0.0.5/",
        "http://172.16.3.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/",  # carrier-grade NAT range (another cloud's metadata)
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",  # IPv6 metadata endpoint (unique local)
        "http://[fe80::1]/",
        "http://[2002:7f00:1::]/",  # 6to4 wrapping 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 wrapping 169.254.169.254
        "http://[ff02::1]/",
        "http://[::]/",
    ],
)
def test_refuses_non_public_addresses_by_default(url: str) -> None:
    with pytest.raises(ForbiddenURLError, match="address"):
        fetch_url(url)


def test_loopback_is_refused_unless_explicitly_allowed(server: str) -> None:
    with pytest.raises(ForbiddenURLError, match="loopback"):
        fetch_url(f"{server}/img")
    assert fetch_url(f"{server}/img", LOCAL) == BODY


def test_metadata_address_refused_even_with_loopback_allowed() -> None:
    with pytest.raises(ForbiddenURLError, match="link-local"):
        fetch_url("http://169.254.169.254/latest/meta-data/", LOCAL)


@pytest.mark.parametrize(
    "address, forbidden",
    [
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("127.0.0.1", True),
        ("::ffff:10.1.2.3", True),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),  # Teredo, client 192.0.2.45 (TEST-NET)
    ],
)
def test_is_forbidden_address(address: str, forbidden: bool) -> None:
    reason = is_forbidden_address(ipaddress.ip_address(address))
    assert (reason is not None) is forbidden


def test_host_resolving_to_private_address_is_refused() -> None:
    with pytest.raises(ForbiddenURLError, match=re.escape("10.0.0.7")):
        fetch_url("http://images.example/a.jpg", resolver=lambda host, port: ["10.0.0.7"])


def test_any_unsafe_address_among_several_refuses_the_host() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "169.254.169.254"]

    with pytest.raises(ForbiddenURLError, match=re.escape("169.254.169.254")):
        fetch_url("http://images.example/a.jpg", resolver=resolver)


def test_connects_to_the_vetted_address_with_the_original_host_header(server: str) -> None:
    """Resolution happens once and the connection goes to that IP: no DNS rebinding window."""
    port = int(server.rsplit(":", 1)[1])
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["10.9.9.9"]

    body = fetch_url(f"http://images.example:{port}/host", LOCAL, resolver=resolver)
    assert body == f"images.example:{port}".encode()
    assert calls == ["images.example"]


def test_redirect_to_a_forbidden_address_is_refused(server: str) -> None:
    with pytest.raises(ForbiddenURLError, match=re.escape("169.254.169.254")):
        fetch_url(f"{server}/redirect?to=http://169.254.169.254/latest/meta-data/", LOCAL)


def test_redirect_to_a_host_resolving_privately_is_refused(server: str) -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["192.168.0.10"]

    with pytest.raises(ForbiddenURLError, match=re.escape("192.168.0.10")):
        fetch_url(f"{server}/redirect?to=http://intranet.example/x", LOCAL, resolver=resolver)


def test_redirect_to_another_scheme_is_refused(server: str) -> None:
    with pytest.raises(ForbiddenURLError, match="scheme"):
        fetch_url(f"{server}/redirect?to=file:///etc/passwd", LOCAL)


@pytest.mark.parametrize(
    "target",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "mailto:a@b.example",
        "data:image/png;base64,AA",
    ],
)
def test_redirect_to_a_non_http_scheme_is_refused_with_a_reason(server: str, target: str) -> None:
    # httpx itself fails on these Location values with a bare InvalidURL (a 500 in the service)
    url = f"{server}/redirect?to={quote(target, safe='')}"
    with pytest.raises(ForbiddenURLError, match=f"scheme '{target.partition(':')[0].lower()}'"):
        fetch_url(url, LOCAL)
    with pytest.raises(ForbiddenURLError, match="only redirects to http or https"):
        asyncio.run(fetch_url_async(url, LOCAL))


@pytest.mark.parametrize("target", ["http://xn--a.example/", "http://[::1"])
def test_redirect_to_a_malformed_url_is_a_fetch_error(server: str, target: str) -> None:
    with pytest.raises(FetchError):
        asyncio.run(fetch_url_async(f"{server}/redirect?to={quote(target, safe='')}", LOCAL))


def test_invalid_idna_host_is_refused_not_crashed() -> None:
    with pytest.raises(FetchError):
        fetch_url("http://xn--a.example/x.jpg", resolver=lambda host, port: [])


def test_safe_redirects_are_followed(server: str) -> None:
    assert fetch_url(f"{server}/redirect?to=/img", LOCAL) == BODY


def test_redirect_limit(server: str) -> None:
    with pytest.raises(FetchError, match="redirected more than 3 times"):
        fetch_url(f"{server}/loop", LOCAL)
    with pytest.raises(FetchError, match="redirected more than 3 times"):
        asyncio.run(fetch_url_async(f"{server}/loop", LOCAL))


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_size_cap_applies_to_declared_and_streamed_bodies(server: str, path: str) -> None:
    policy = FetchPolicy(allow_loopback=True, max_bytes=4096)
    with pytest.raises(ImageTooLargeError, match="4,096"):
        fetch_url(f"{server}{path}", policy)
    with pytest.raises(ImageTooLargeError, match="4,096"):
        asyncio.run(fetch_url_async(f"{server}{path}", policy))


def test_read_timeout(server: str) -> None:
    policy = FetchPolicy(allow_loopback=True, read_timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetch_url(f"{server}/slow", policy)
    assert time.monotonic() - start < 1.5


def test_total_deadline_async(server: str) -> None:
    policy = FetchPolicy(allow_loopback=True, total_timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(FetchError, match="longer than"):
        asyncio.run(fetch_url_async(f"{server}/slow", policy))
    assert time.monotonic() - start < 1.5


def test_http_errors_are_reported(server: str) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(f"{server}/missing", LOCAL)


def test_connection_refused_is_a_fetch_error() -> None:
    with pytest.raises(FetchError, match="could not fetch"):
        fetch_url("http://127.0.0.1:9/", LOCAL)


def test_unresolvable_host_is_a_fetch_error() -> None:
    with pytest.raises(FetchError, match="resolve"):
        fetch_url("http://no-such-host.invalid/a.jpg")


def test_allowlist(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    policy = FetchPolicy.create(allowed_hosts=["Example.COM."], allow_loopback=True)
    resolver = lambda host, port: ["127.0.0.1"]  # noqa: E731
    assert fetch_url(f"http://cdn.example.com:{port}/img", policy, resolver=resolver) == BODY
    assert fetch_url(f"http://example.com:{port}/img", policy, resolver=resolver) == BODY
    with pytest.raises(ForbiddenURLError, match="allow-list"):
        fetch_url(f"http://badexample.com:{port}/img", policy, resolver=resolver)
    with pytest.raises(ForbiddenURLError, match="allow-list"):
        fetch_url(f"{server}/img", policy)


def test_environment_proxies_are_ignored(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    assert fetch_url(f"{server}/img", LOCAL) == BODY


def test_stacked_gzip_is_inflated_as_a_stream_and_capped_on_the_inflated_size(server: str) -> None:
    assert fetch_url(f"{server}/gzip-image", LOCAL) == BODY
    policy = FetchPolicy(allow_loopback=True, max_bytes=1 << 20)
    start = time.monotonic()
    with pytest.raises(ImageTooLargeError, match="after decompression"):
        fetch_url(f"{server}/gzip-bomb", policy)
    assert time.monotonic() - start < 2.0
    with pytest.raises(ImageTooLargeError, match="after decompression"):
        asyncio.run(fetch_url_async(f"{server}/gzip-bomb", policy))


def test_unsupported_content_encoding_is_refused(server: str) -> None:
    with pytest.raises(FetchError, match="only gzip and deflate"):
        fetch_url(f"{server}/br", LOCAL)


@pytest.mark.parametrize("path", ["/trickle-headers", "/trickle-body"])
def test_one_deadline_from_connect_to_last_byte(server: str, path: str) -> None:
    """A byte every 50 ms never trips the 5 s read timeout; the overall deadline stops it."""
    policy = FetchPolicy(allow_loopback=True, total_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(FetchError, match="longer than 1 s"):
        fetch_url(f"{server}{path}", policy)
    assert time.monotonic() - start < 3.0  # 1 s, plus scheduling on a busy machine
