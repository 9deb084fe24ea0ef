"""JSON request bodies parsed and validated at a bounded cost, with bounded error messages.

Three things a hostile body could otherwise turn into a 500 or a stall:

- nesting deep enough to exhaust the JSON decoder's recursion limit (``RecursionError``);
- integers longer than Python's 4300-digit conversion limit (``ValueError``);
- a huge list of invalid items, where pydantic reports one error per item: a 2 MB body of
  ``[1,1,...]`` used to produce a million errors, an 80 MB answer and gigabytes of memory.

Bodies with more JSON values than any valid request of their path needs are refused before they
are decoded (counting costs about 10 ms per 10 MB; decoding 10 MB of tiny values up to 2 s of the
event loop). Lists are bounded in the schemas (``max_length``, which pydantic checks before
looking at the items), and every validation message lists at most :data:`MAX_REPORTED_ERRORS`
problems, each cut to :data:`MAX_ERROR_MESSAGE_CHARS` characters, and never echoes the input.

:class:`JSONBodyRoute` gives FastAPI's own body parsing (the V2 and TF Serving routes) the same
clear 400 answers as the hand-parsed routes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from imgclf.serving.http.dependencies import Services
from imgclf.serving.http.observability import CLIENT_CLOSED_REQUEST

#: Validation problems listed in an error message; the rest are counted.
MAX_REPORTED_ERRORS = 5
#: Longest single problem description in an error message.
MAX_ERROR_MESSAGE_CHARS = 200


class JSONBodyError(ValueError):
    """The body is not JSON we can parse; ``str()`` says why in terms a client can act on."""


def count_values(raw: bytes) -> int:
    """An upper bound of the number of arrays, objects and values in a JSON document.

    Decoding costs about 0.1 us per value and runs on the event loop (the decoder holds the GIL,
    so a thread would not help): 10 MB of ``[],[],...`` takes 2 s. Counting separators and
    openings costs about 10 ms per 10 MB and tells in advance what the decoding would cost.
    """
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1


def parse_json(raw: bytes, *, max_values: int | None = None) -> Any:
    """Decode a JSON request body.

    Args:
        raw: The body.
        max_values: Refuse bodies with more JSON values (see :func:`count_values`) before
            decoding them.

    Raises:
        JSONBodyError: Not UTF-8, not valid JSON, nested too deeply, a number too long, or more
            values than ``max_values``.
    """
    if max_values is not None and count_values(raw) > max_values:
        raise JSONBodyError(
            f"request body has more than {max_values:,} JSON values, more than any valid "
            "request to this path needs"
        )
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise JSONBodyError(
            f"request body is not valid JSON ({exc.msg} at byte {exc.pos})"
        ) from exc
    except UnicodeDecodeError as exc:
        raise JSONBodyError("request body is not valid JSON (not UTF-8 text)") from exc
    except RecursionError as exc:
        raise JSONBodyError("request body nests JSON arrays or objects too deeply") from exc
    except ValueError as exc:  # the interpreter's limit on integer digits
        raise JSONBodyError(
            "request body has a number with too many digits (more than 4300)"
        ) from exc


def describe_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    """One line naming the first few validation problems (location: message), never the input.

    Args:
        errors: pydantic/FastAPI error dicts (``loc`` and ``msg`` are used).
    """
    errors = list(errors)
    shown = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        where = where[:MAX_ERROR_MESSAGE_CHARS] or "body"
        message = str(error.get("msg", ""))
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - 3] + "..."
        shown.append(f"{where}: {message}")
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f" (and {more} more problems)" if more > 0 else "")


class _JSONBodyRequest(Request):
    max_values: int | None = None

    async def body(self) -> bytes:
        try:
            return await super().body()
        except ClientDisconnect as exc:  # FastAPI would call it "an error parsing the body"
            raise HTTPException(CLIENT_CLOSED_REQUEST, "the client closed the request") from exc

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = parse_json(await self.body(), max_values=self.max_values)
            except JSONBodyError as exc:
                raise HTTPException(400, str(exc)) from exc
        return self._json


class JSONBodyRoute(APIRoute):
    """An ``APIRoute`` whose JSON body parsing answers 400 with a reason for every bad body.

    FastAPI parses bodies with ``json.loads`` and answers anything but a syntax error with a
    bare "There was an error parsing the body"; this says what was wrong.
    """

    def max_values(self, services: Services) -> int:
        """The most JSON values a valid body of this route has (the default: a list of images)."""
        return max_json_values(services)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The default handler, given a request whose ``json()`` is :func:`parse_json`."""
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            wrapped = _JSONBodyRequest(request.scope, request.receive)
            wrapped.max_values = self.max_values(request.app.state.services)
            return await handler(wrapped)

        return handle


def max_json_values(services: Services) -> int:
    """JSON values in the largest valid list of images: a few per image, plus some slack."""
    return 64 + 16 * services.settings.max_batch_images
