"""Status codes for core errors, decided at the edge.

:mod:`imgclf.errors` knows no status codes. Each transport keeps one table of its own from
exception type to its code and looks errors up with :func:`status_for`, which walks the error's
MRO so the most specific type listed wins (a subclass nobody listed answers as its parent):

- REST service: ``serving.http.app.REST_STATUS`` (HTTP);
- TF Serving REST: ``serving.http.tfserving.TFSERVING_STATUS`` (HTTP);
- V2 REST (model server): ``serving.model_server.rest.V2_REST_STATUS`` (HTTP);
- V2 gRPC (model server): ``serving.model_server.grpc_service.GRPC_STATUS`` (``grpc.StatusCode``);
- TF Serving gRPC (model server): ``serving.model_server.tfserving_grpc.TFSERVING_GRPC_STATUS``
  (the V2 gRPC table); TF Serving REST on the model server answers as its V2 REST;
- Lambda: ``serving.aws_lambda.handler.LAMBDA_STATUS`` (HTTP).

The HTTP tables start from :data:`HTTP_STATUS`, the plain HTTP meaning of each error, and add
their protocol's differences to it, so that meaning is written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from imgclf.errors import (
    ImageTooCostlyError,
    ImageTooLargeError,
    ImgclfError,
    InputError,
    MethodNotAllowedError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelServerError,
    ModelServerTimeoutError,
    ModelServerUnavailableError,
    OverloadedError,
    RequestShapeError,
    ServingError,
    UnsupportedMediaError,
)

T = TypeVar("T")

#: The HTTP status of each core error (subclasses not listed answer as their parent).
HTTP_STATUS: Mapping[type[Exception], int] = MappingProxyType(
    {
        ImgclfError: 500,
        InputError: 400,
        UnsupportedMediaError: 415,
        ImageTooLargeError: 413,
        ImageTooCostlyError: 422,
        ModelNotFoundError: 404,
        RequestShapeError: 422,
        MethodNotAllowedError: 405,
        ServingError: 500,
        OverloadedError: 503,
        ModelNotReadyError: 503,
        ModelServerError: 502,
        ModelServerUnavailableError: 503,
        ModelServerTimeoutError: 504,
    }
)


def status_for(exc: BaseException, table: Mapping[type[Exception], T], default: T) -> T:
    """The code ``table`` gives the most specific of ``exc``'s types it lists.

    Args:
        exc: The error to answer.
        table: A transport's table, exception type -> code.
        default: The code for an error whose types the table does not list.

    Returns:
        The table's code for the first class of ``type(exc).__mro__`` found in it, else
        ``default``.
    """
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default
