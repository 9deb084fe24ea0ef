"""JSON from clients, decoded at a bounded cost and described in bounded error messages.

Every service that reads JSON from a client (the REST service, the model server's REST API, the
Lambda handler and its local invoke URL) decodes it here, so each refuses the same hostile
bodies with a 4xx and a reason instead of an unhandled exception (a 500):

- nesting deep enough to exhaust the JSON decoder's recursion limit (``RecursionError``);
- integers longer than Python's 4300-digit conversion limit (``ValueError``);
- bytes that are not UTF-8 text;
- optionally, more JSON values than any valid request needs (:func:`count_values`), refused
  before decoding: decoding 10 MB of tiny values holds the GIL for up to 2 s.

:func:`describe_errors` turns pydantic validation errors into one short line that never echoes
the input: a 2 MB body of ``[1,1,...]`` used to produce a million errors and an 80 MB answer.
Standard library only, so every serving install can use it. :func:`decode_base64` reads
the base64 images JSON bodies carry.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any

from imgclf.errors import ImageDecodeError

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


def describe_errors(
    errors: Iterable[Mapping[str, Any]],
    *,
    limit: int = MAX_REPORTED_ERRORS,
    unnamed: str = "body",
    more: str = "more problems",
) -> str:
    """One line naming the first few validation problems (location: message), never the input.

    Args:
        errors: pydantic/FastAPI error dicts (``loc`` and ``msg`` are used).
        limit: Problems listed; the rest are counted.
        unnamed: Location shown for an error about the whole document.
        more: Noun of the count of problems left out.
    """
    errors = list(errors)
    shown = []
    for error in errors[:limit]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        where = where[:MAX_ERROR_MESSAGE_CHARS] or unnamed
        message = str(error.get("msg", ""))
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - 3] + "..."
        shown.append(f"{where}: {message}")
    left = len(errors) - len(shown)
    return "; ".join(shown) + (f" (and {left} {more})" if left > 0 else "")


def decode_base64(text: str, *, what: str = "'image'") -> bytes:
    """Decode standard or URL-safe base64, with or without a ``data:...;base64,`` prefix.

    Args:
        text: The base64 text.
        what: What the text is, for the error message.

    Raises:
        ImageDecodeError: The text is not valid base64.
    """
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    cleaned = "".join(text.split())
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(
            f"{what} is not valid base64 ({exc}); encode the image bytes"
        ) from exc
