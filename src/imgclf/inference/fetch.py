"""Fetch an image from a URL without letting the URL reach places it should not (SSRF-safe).

Used by ``imgclf predict URL``, the REST API (``{"url": ...}``) and the Lambda handler. Every hop
(the first request and each redirect) is checked the same way:

1. the scheme is ``http`` or ``https`` and the URL is not absurdly long;
2. the host is on the optional allow-list;
3. the host is resolved and **every** address it resolves to must be public: loopback, private,
   link-local (including the cloud metadata address 169.254.169.254), carrier-grade NAT, reserved,
   multicast and unspecified addresses are refused, as are IPv6 forms that embed one of them
   (IPv4-mapped, 6to4, Teredo, NAT64);
4. the connection goes to the vetted IP itself, with the original ``Host`` header and TLS server
   name, so a DNS answer that changes between the check and the connect (DNS rebinding) cannot
   redirect it.

Redirects are followed by hand up to a limit. One deadline covers everything from the first
connect to the last byte, redirects included: every socket operation waits at most until it, so
an upstream that trickles its headers or body a byte at a time cannot hold a fetch past it. The
body is streamed with a byte cap (the ``Content-Length`` header is checked first); a compressed
body (``Content-Encoding: gzip``, ``deflate``, or two of them stacked) is inflated here, a
piece of at most 64 KiB at a time, and the cap applies to the inflated size, so a 2 KB body that
inflates to a gigabyte stops at the cap.

:func:`fetch_url` is the one implementation: ``imgclf predict``, the Lambda handler and, through
:func:`fetch_url_async` (which runs it on a thread pool of its own), the REST service all use it,
so decompression never runs on an event loop.
Loopback addresses can be allowed explicitly (``allow_loopback``) for local testing; it is off by
default. Proxies from the environment are ignored, since a proxy would make the connection itself.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import certifi
import httpcore
import httpx

from imgclf.errors import FetchError, ForbiddenURLError, ImageTooLargeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolve(host, port)`` -> the addresses the host resolves to (strings).
Resolver = Callable[[str, int], Sequence[str]]

ALLOWED_SCHEMES = ("http", "https")
MAX_URL_LENGTH = 4096
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "imgclf-fetch/1"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")  # RFC 3986 scheme
#: Content codings inflated here (zlib's wbits: 32 + 15 accepts a gzip or a zlib header).
_CODINGS = {"gzip": 32 + 15, "x-gzip": 32 + 15, "deflate": 32 + 15}
_MAX_CODINGS = 2  # "gzip, gzip" is legal; deeper stacks serve only to multiply the expansion
_PIECE = 64 * 1024  # largest piece inflated at once
#: Threads fetching URLs for event-loop servers; each fetch holds one for at most its deadline.
FETCH_THREADS = 32


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for fetching one URL.

    Attributes:
        max_bytes: Largest body accepted; larger bodies are refused with ``ImageTooLargeError``.
        connect_timeout_s: Time allowed to open each connection.
        read_timeout_s: Time allowed between two reads of the response.
        total_timeout_s: Deadline for the whole fetch, redirects included.
        max_redirects: Redirects followed before giving up.
        allowed_hosts: If not empty, only these hosts (and their subdomains) may be fetched.
        allow_loopback: Allow 127.0.0.0/8 and ::1 (for local testing only; off by default).
    """

    max_bytes: int = 10 * 1024 * 1024
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    total_timeout_s: float = 15.0
    max_redirects: int = 3
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    allow_loopback: bool = False

    @classmethod
    def create(cls, *, allowed_hosts: Iterable[str] = (), **kwargs: Any) -> FetchPolicy:
        """Build a policy, normalising the allow-list (lower case, no trailing dot)."""
        hosts = frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip())
        return cls(allowed_hosts=hosts, **kwargs)


@dataclass(frozen=True)
class _Hop:
    """One vetted request: where to connect and what to tell the server."""

    url: httpx.URL  # the original URL, as the user (or redirect) gave it
    connect_url: httpx.URL  # same URL with the host replaced by the vetted IP
    host_header: str
    server_name: str


def is_forbidden_address(address: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Say why an address must not be fetched from, or return None if it is public.

    Args:
        address: The resolved address.
        allow_loopback: Accept loopback addresses (local testing only).

    Returns:
        A short reason such as ``"private"`` or ``"link-local (cloud metadata)"``, or None.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_forbidden_address(embedded, allow_loopback=allow_loopback)
    if address.is_loopback:
        return None if allow_loopback else "loopback"
    checks = (
        ("unspecified", address.is_unspecified),
        ("link-local (cloud metadata)", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    )
    for reason, hit in checks:
        if hit:
            return reason
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _parse_url(url: str | httpx.URL) -> httpx.URL:
    text = str(url)
    if len(text) > MAX_URL_LENGTH:
        raise ForbiddenURLError(
            f"URL is {len(text)} characters long; the limit is {MAX_URL_LENGTH}"
        )
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ForbiddenURLError(f"not a valid URL: {exc}") from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise ForbiddenURLError(
            f"URL scheme {parsed.scheme or '(none)'!r} is not allowed; use http or https"
        )
    if not parsed.raw_host:  # raw: decoding an invalid IDNA name ("xn--a") would raise
        raise ForbiddenURLError("URL has no host; give an absolute http(s) URL")
    return parsed


def _check_allowlist(host: str, policy: FetchPolicy) -> None:
    if not policy.allowed_hosts:
        return
    name = host.lower().rstrip(".")
    if any(name == h or name.endswith("." + h) for h in policy.allowed_hosts):
        return
    raise ForbiddenURLError(
        f"host {host!r} is not on the allow-list ({', '.join(sorted(policy.allowed_hosts))})"
    )


def _vet_addresses(host: str, addresses: Sequence[str], policy: FetchPolicy) -> str:
    """Return the address to connect to, refusing the host if any of its addresses is unsafe."""
    if not addresses:
        raise FetchError(f"host {host!r} did not resolve to any address")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        reason = is_forbidden_address(address, allow_loopback=policy.allow_loopback)
        if reason is not None:
            raise ForbiddenURLError(
                f"host {host!r} resolves to {address}, a {reason} address; only public "
                "addresses may be fetched"
            )
    return addresses[0].split("%", 1)[0]


def _host(url: httpx.URL) -> str:
    """The host in ASCII (IDNA) form, without IPv6 brackets."""
    return url.raw_host.decode("ascii")


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _make_hop(url: httpx.URL, addresses: Sequence[str], policy: FetchPolicy) -> _Hop:
    host = _host(url)
    ip = _vet_addresses(host, addresses, policy)
    host_header = f"[{host}]" if ":" in host else host
    if url.port is not None and url.port != (443 if url.scheme == "https" else 80):
        host_header = f"{host_header}:{url.port}"
    return _Hop(
        url=url, connect_url=url.copy_with(host=ip), host_header=host_header, server_name=host
    )


def system_resolve(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver; raise ``FetchError`` if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for all fetches (loading the CA bundle costs ~50 ms)."""
    return ssl.create_default_context(cafile=certifi.where())


def _timeout(policy: FetchPolicy) -> httpx.Timeout:
    return httpx.Timeout(
        connect=policy.connect_timeout_s,
        read=policy.read_timeout_s,
        write=policy.read_timeout_s,
        pool=policy.connect_timeout_s,
    )


def _request(client: httpx.Client, hop: _Hop) -> httpx.Request:
    return client.build_request(
        "GET",
        hop.connect_url,
        headers={
            "Host": hop.host_header,
            "User-Agent": _USER_AGENT,
            "Accept": "image/*",
            "Accept-Encoding": "gzip, deflate",
        },
        extensions={"sni_hostname": hop.server_name},
    )


def _refuse_other_scheme_redirects(response: httpx.Response) -> None:
    """Refuse a redirect to a non-http(s) URL before httpx parses it (an httpx response hook).

    httpx prepares the next request of every redirect, even when it does not follow it, and
    fails with a bare ``InvalidURL`` on targets such as ``javascript:alert(1)``; this runs first.
    """
    if response.status_code not in _REDIRECT_CODES:
        return
    location = response.headers.get("location")
    if not location:
        return
    match = _SCHEME.match(location.strip())
    scheme = match.group(1).lower() if match else ""
    if scheme and scheme not in ALLOWED_SCHEMES:
        raise ForbiddenURLError(
            f"the URL redirected to a URL with scheme {scheme!r}; only redirects to http or "
            "https URLs are followed"
        )


def _redirect_target(response: httpx.Response, hop: _Hop) -> httpx.URL | None:
    """The next URL if the response is a redirect, else None; raise on HTTP errors.

    Raises:
        ForbiddenURLError: The redirect leads to another scheme (``javascript:``, ``data:``...).
        FetchError: No or an unparsable ``Location``, or an HTTP error status.
    """
    if response.status_code in _REDIRECT_CODES:
        location = response.headers.get("location")
        if not location:
            raise FetchError(f"{hop.url} answered {response.status_code} without a Location")
        try:
            target = hop.url.join(location)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise FetchError(f"{hop.url} redirected to an invalid URL ({exc})") from exc
        if target.scheme not in ALLOWED_SCHEMES:
            raise ForbiddenURLError(
                f"{hop.url} redirected to a URL with scheme {target.scheme!r}; only redirects to "
                "http or https URLs are followed"
            )
        return target
    if response.status_code >= 400:
        raise FetchError(f"{hop.url} answered HTTP {response.status_code}; expected an image")
    return None


def _check_declared_size(response: httpx.Response, hop: _Hop, policy: FetchPolicy) -> None:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise ImageTooLargeError(
            f"{hop.url} declares {int(declared):,} bytes; the limit is {policy.max_bytes:,}"
        )


class _BodyBuffer:
    """Accumulates a streamed body and enforces the byte cap and the overall deadline."""

    def __init__(self, hop: _Hop, policy: FetchPolicy, deadline: float) -> None:
        self._hop, self._policy, self._deadline = hop, policy, deadline
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._policy.max_bytes:
            raise ImageTooLargeError(
                f"{self._hop.url} sent more than {self._policy.max_bytes:,} bytes (after "
                "decompression); send a smaller image"
            )
        if time.monotonic() > self._deadline:
            raise FetchError(
                f"{self._hop.url} took longer than {self._policy.total_timeout_s:g} s to download"
            )
        self._chunks.append(chunk)

    def getvalue(self) -> bytes:
        return b"".join(self._chunks)


def _hop_for(url: httpx.URL, policy: FetchPolicy, resolver: Resolver) -> _Hop:
    host = _host(url)
    _check_allowlist(host, policy)
    literal = _literal_ip(host)
    addresses = [literal] if literal else resolver(host, _port(url))
    return _make_hop(url, addresses, policy)


def _wrap_transport_error(
    exc: Exception, url: httpx.URL, policy: FetchPolicy, deadline: float
) -> FetchError:
    if isinstance(exc, httpx.InvalidURL | UnicodeError):  # a Location httpx cannot parse
        return FetchError(f"{url} redirected to an invalid URL ({exc})")
    if isinstance(exc, httpx.TimeoutException) and time.monotonic() >= deadline:
        return FetchError(
            f"fetching {url} took longer than {policy.total_timeout_s:g} s (from connect to the "
            "last byte); try a faster host"
        )
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(f"timed out fetching {url} ({type(exc).__name__})")
    return FetchError(f"could not fetch {url}: {type(exc).__name__}: {exc}")


def fetch_url(
    url: str,
    policy: FetchPolicy | None = None,
    *,
    resolver: Resolver = system_resolve,
    transport: httpx.BaseTransport | None = None,
) -> bytes:
    """Download ``url`` safely and return the body bytes, inflated if it was compressed.

    Args:
        url: An absolute ``http`` or ``https`` URL.
        policy: Limits and address rules (defaults to :class:`FetchPolicy`).
        resolver: Host resolver (injectable for tests).
        transport: httpx transport (injectable for tests; it bypasses the per-socket deadline,
            the body is still checked against it).

    Returns:
        The response body, at most ``policy.max_bytes`` long.

    Raises:
        ForbiddenURLError: Bad scheme, host not allowed, or an address that is not public.
        ImageTooLargeError: The body, inflated, is larger than ``policy.max_bytes``.
        FetchError: Timeout or deadline, connection failure, HTTP error, unsupported or
            corrupt content encoding, or too many redirects.
    """
    policy = policy or FetchPolicy()
    deadline = time.monotonic() + policy.total_timeout_s
    target = _parse_url(url)
    hop = _hop_for(target, policy, resolver)  # refuse before opening a client
    with httpx.Client(
        timeout=_timeout(policy),
        transport=transport or _deadline_transport(deadline),
        event_hooks={"response": [_refuse_other_scheme_redirects]},
    ) as client:
        for attempt in range(policy.max_redirects + 1):
            if attempt:
                hop = _hop_for(target, policy, resolver)
            try:
                response = client.send(_request(client, hop), stream=True)
                try:
                    next_url = _redirect_target(response, hop)
                    if next_url is None:
                        return _read_body(response, hop, policy, deadline)
                finally:
                    response.close()
            except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
                raise _wrap_transport_error(exc, hop.url, policy, deadline) from exc
            target = _parse_url(next_url)
    raise FetchError(f"{url} redirected more than {policy.max_redirects} times")


def _read_body(response: httpx.Response, hop: _Hop, policy: FetchPolicy, deadline: float) -> bytes:
    _check_declared_size(response, hop, policy)
    body = _BodyBuffer(hop, policy, deadline)
    inflate = _inflater(response.headers.get("content-encoding", ""), hop)
    for chunk in response.iter_raw():
        for piece in inflate(chunk):
            body.add(piece)
    return body.getvalue()


def _inflater(content_encoding: str, hop: _Hop) -> Callable[[bytes], Iterator[bytes]]:
    """A function that turns raw body chunks into inflated pieces of at most 64 KiB each.

    Raises:
        FetchError: An unsupported coding, or more than two stacked.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    unknown = sorted(set(codings) - set(_CODINGS))
    if unknown:
        raise FetchError(
            f"{hop.url} sent Content-Encoding {', '.join(unknown)}; only gzip and deflate are "
            "accepted"
        )
    if len(codings) > _MAX_CODINGS:
        raise FetchError(
            f"{hop.url} stacked {len(codings)} content encodings; at most {_MAX_CODINGS} are "
            "accepted"
        )
    # Codings are listed in the order they were applied: undo the last one first.
    layers = [zlib.decompressobj(_CODINGS[c]) for c in reversed(codings)]

    def through(depth: int, data: bytes) -> Iterator[bytes]:
        if depth == len(layers):
            yield data
            return
        layer = layers[depth]
        while data and not layer.eof:
            try:
                piece = layer.decompress(data, _PIECE)
            except zlib.error as exc:
                raise FetchError(f"{hop.url} sent a corrupt compressed body ({exc})") from exc
            data = layer.unconsumed_tail
            if piece:
                yield from through(depth + 1, piece)

    return lambda chunk: through(0, chunk)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write waits at most until the fetch's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream, self._deadline = stream, deadline

    def _wait(self, timeout: float | None) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise httpcore.ReadTimeout("the fetch's deadline has passed")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._wait(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._wait(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, self._wait(timeout))
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, with every connect, read and write bounded by one deadline."""

    def __init__(self, deadline: float) -> None:
        self._backend, self._deadline = httpcore.SyncBackend(), deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise httpcore.ConnectTimeout("the fetch's deadline has passed")
        limit = remaining if timeout is None else min(timeout, remaining)
        stream = self._backend.connect_tcp(host, port, limit, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are never fetched from")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _deadline_transport(deadline: float) -> httpx.HTTPTransport:
    """An httpx transport whose sockets give up at ``deadline`` (TLS verified with certifi).

    httpx has no option for a network backend, so the transport's connection pool is replaced
    by one built the same way with :class:`_DeadlineBackend`; no proxy is ever used.
    """
    transport = httpx.HTTPTransport(verify=_ssl_context(), trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=_ssl_context(), network_backend=_DeadlineBackend(deadline)
    )
    return transport


@functools.cache
def _fetch_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="imgclf-fetch")


async def fetch_url_async(
    url: str,
    policy: FetchPolicy | None = None,
    *,
    resolver: Resolver = system_resolve,
    transport: httpx.BaseTransport | None = None,
) -> bytes:
    """:func:`fetch_url` for event-loop servers, on a thread pool of its own.

    The fetch (resolving, reading, inflating) never runs on the event loop; if the caller is
    cancelled, the thread still stops at the fetch's deadline. Same checks, same errors.
    """
    call = functools.partial(fetch_url, url, policy, resolver=resolver, transport=transport)
    return await asyncio.get_running_loop().run_in_executor(_fetch_pool(), call)
