"""JSON bodies of the REST service's FastAPI routes, parsed with :mod:`imgclf.serving.json_input`.

:class:`JSONBodyRoute` gives FastAPI's own body parsing (the V2 and TF Serving routes) the same
clear 400 answers as the hand-parsed routes: deep nesting, over-long numbers and bodies with more
JSON values than any valid request of the path needs (:func:`max_json_values`) are refused with
the reason. Lists are bounded in the schemas (``max_length``, which pydantic checks before
looking at the items).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from imgclf.serving.http.dependencies import Services
from imgclf.serving.http.observability import CLIENT_CLOSED_REQUEST
from imgclf.serving.json_input import JSONBodyError, parse_json


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
