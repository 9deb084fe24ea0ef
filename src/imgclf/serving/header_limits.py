"""Caps on request headers, answered 431 (as nginx and Triton do), for every HTTP server we run.

httptools (uvicorn's parser) accepts a header section of any size and any number of headers, and
uvicorn keeps them all in memory for the request: a 1 MB header or 100,000 small ones were
answered 200. :func:`header_capped_protocol` gives uvicorn a protocol class that counts the request
line and header bytes, and the headers, as the parser reports them and answers
``431 Request Header Fields Too Large`` (then closes the connection) as soon as either cap is
passed, before the request reaches the app. The REST service and the model server's REST API use
it; the Lambda local invoke URL (the standard library's server, which already stops at 100 headers
and 64 KiB per line) checks the total with :func:`header_problem`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: Request line plus headers, in bytes (nginx answers 431 past 4 x 8 KiB buffers by default).
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
#: Header fields per request (the standard library's http.client stops at 100 too).
DEFAULT_MAX_HEADERS = 100


def header_problem(
    fields: Iterable[tuple[bytes | str, bytes | str]], max_bytes: int, max_count: int
) -> str | None:
    """Say why a request's headers are over the caps, or return None when they are within.

    Args:
        fields: The header (name, value) pairs.
        max_bytes: Cap on the names and values together (plus 4 bytes a line for ``: `` and CRLF).
        max_count: Cap on the number of header fields.
    """
    count = size = 0
    for name, value in fields:
        count += 1
        size += len(name) + len(value) + 4
    if count > max_count:
        return f"too many request headers: more than {max_count}"
    if size > max_bytes:
        return f"request headers too large: more than {max_bytes:,} bytes"
    return None


def _answer_431(reason: str) -> bytes:
    body = f'{{"detail": "{reason}"}}'.encode()
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


def header_capped_protocol(max_bytes: int, max_count: int) -> type[asyncio.Protocol]:
    """The httptools protocol of uvicorn with header caps, for ``uvicorn.run(http=...)``.

    Args:
        max_bytes: Request line plus header names and values, in bytes.
        max_count: Header fields per request.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderCappedProtocol(HttpToolsProtocol):
        """Answers 431 and closes the connection once a request's headers pass the caps."""

        _refused = False
        _header_bytes = 0
        _header_count = 0

        def on_message_begin(self) -> None:
            self._header_bytes = self._header_count = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._header_bytes += len(url)
            self._check()
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value) + 4
            self._header_count += 1
            self._check()
            super().on_header(name, value)

        def _check(self) -> None:
            if self._header_count > max_count:
                self._refuse(f"too many request headers: more than {max_count}")
            elif self._header_bytes > max_bytes:
                self._refuse(f"request headers too large: more than {max_bytes:,} bytes")

        def _refuse(self, reason: str) -> None:
            self._refused = True
            self.transport.write(_answer_431(reason))
            self.transport.close()
            # Raising stops the parser; uvicorn would answer the parse error with a 400, which
            # send_400_response below leaves out, since this connection has its answer.
            raise _HeaderLimitError(reason)

        def send_400_response(self, msg: str) -> None:
            if not self._refused:
                super().send_400_response(msg)

        def data_received(self, data: bytes) -> None:
            if not self._refused:  # the rest of a refused request is never parsed
                super().data_received(data)

    return HeaderCappedProtocol


class _HeaderLimitError(Exception):
    """Raised from a parser callback to stop parsing a request already answered 431."""


def uvicorn_options(max_bytes: int, max_count: int) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` that apply the header caps."""
    return {"http": header_capped_protocol(max_bytes, max_count)}
