"""Status codes live at the edge: errors.py knows none, each transport's table maps them."""

from __future__ import annotations

import inspect

import grpc
import pytest

from imgclf import errors
from imgclf.serving.aws_lambda.handler import LAMBDA_STATUS
from imgclf.serving.http.app import REST_STATUS
from imgclf.serving.http.tfserving import TFSERVING_STATUS
from imgclf.serving.model_server.grpc_service import GRPC_STATUS
from imgclf.serving.model_server.rest import V2_REST_STATUS
from imgclf.serving.status import status_for

ERROR_TYPES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ImgclfError)
]
HTTP_TABLES = {
    "rest": REST_STATUS,
    "tf-serving": TFSERVING_STATUS,
    "v2-rest": V2_REST_STATUS,
    "lambda": LAMBDA_STATUS,
}


@pytest.mark.parametrize("cls", ERROR_TYPES, ids=lambda cls: cls.__name__)
def test_core_errors_know_no_status_codes(cls: type[errors.ImgclfError]) -> None:
    assert not [name for name in vars(cls) if "status" in name], f"{cls.__name__} knows a status"


@pytest.mark.parametrize("table", HTTP_TABLES.values(), ids=HTTP_TABLES.keys())
@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.ImageDecodeError("x"), 400),
        (errors.ForbiddenURLError("x"), 400),  # a FetchError, so an InputError: 400
        (errors.UnsupportedMediaError("x"), 415),
        (errors.ImageTooLargeError("x"), 413),
        (errors.ModelNotFoundError("x"), 404),
        (errors.RequestShapeError("x"), 422),
        (errors.MethodNotAllowedError("x"), 405),
        (errors.OverloadedError("x"), 503),
        (errors.ModelNotReadyError("x"), 503),
        (errors.ModelServerUnavailableError("x"), 503),
        (errors.ModelServerTimeoutError("x"), 504),
        (errors.ModelServerError("x"), 502),
        (errors.ServingError("x"), 500),
        (errors.BundleError("x"), 500),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_http_tables(table: dict[type[Exception], int], error: Exception, status: int) -> None:
    assert status_for(error, table, 500) == status


def test_grpc_table_and_unlisted_errors() -> None:
    class NoSuchLabelSet(errors.ModelNotFoundError):
        """A subclass no table lists answers as its nearest listed parent."""

    code = grpc.StatusCode
    assert status_for(NoSuchLabelSet("x"), GRPC_STATUS, code.UNKNOWN) == code.NOT_FOUND
    assert status_for(errors.ImageDecodeError("x"), GRPC_STATUS, code.UNKNOWN) == (
        code.INVALID_ARGUMENT
    )
    assert status_for(errors.OverloadedError("x"), GRPC_STATUS, code.UNKNOWN) == code.UNAVAILABLE
    assert status_for(errors.ExportError("x"), GRPC_STATUS, code.UNKNOWN) == code.INTERNAL
    assert status_for(KeyError("x"), GRPC_STATUS, code.UNKNOWN) == code.UNKNOWN
    assert status_for(NoSuchLabelSet("x"), REST_STATUS, 500) == 404
