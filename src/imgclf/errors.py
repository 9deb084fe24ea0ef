"""The exceptions imgclf raises, in one place.

Every error the package raises on purpose derives from :class:`ImgclfError`, so callers can catch
one type. These classes say *what* went wrong and know no status codes: each transport maps them
to its own codes at the edge, in one table of its own (exception type -> code) looked up with
:func:`imgclf.serving.status.status_for`, which walks the exception's MRO so the most specific
type listed wins:

- REST service (``serving/http/app.py``), V2 REST (``serving/model_server/rest.py``), TF Serving
  REST (``serving/http/tfserving.py``), Lambda (``serving/aws_lambda/handler.py``): HTTP
  statuses, built on ``imgclf.serving.status.HTTP_STATUS``;
- V2 gRPC (``serving/model_server/grpc_service.py``): gRPC status codes.

A new error type is a class here (placed in the tree below) plus a row in the tables of the
transports that answer it differently from its parent. The codes in brackets below are the HTTP
ones, for orientation; the tables are the truth.

Hierarchy::

    ImgclfError
    ├── ConfigError                  bad option or setting (unknown backbone, export option, ...)
    ├── DatasetError                 a dataset folder cannot be used (no classes, empty split, ...)
    │   └── DownloadError            fetching or verifying a dataset failed
    ├── WeightsUnavailableError      pretrained weights cannot be reached (offline, unknown model)
    ├── BundleError                  a model bundle is missing, corrupt or incompatible
    │   └── ChecksumMismatchError    an artifact's sha256 differs from the manifest
    ├── ExportError                  an export failed or did not pass its parity check
    ├── InputError                   a bad input image or request, the caller's fault [400]
    │   ├── ImageDecodeError         not a decodable image: corrupt, truncated, zero bytes [400]
    │   ├── UnsupportedMediaError    content type or encoding not accepted [415]
    │   ├── ImageTooLargeError       too many pixels or bytes, or too much memory to decode [413]
    │   ├── ImageTooCostlyError      too many scans or frames, or too slow to decode [422]
    │   ├── FetchError               a URL input could not be fetched safely [400]
    │   │   └── ForbiddenURLError    the URL points at a refused address or scheme [400]
    │   ├── ModelNotFoundError       no such model or version on this server [404]
    │   ├── RequestShapeError        a JSON request of the wrong shape (fields, types) [422]
    │   └── MethodNotAllowedError    the request's method is not accepted [405]
    └── ServingError                 the serving path failed, not the caller's fault [500]
        ├── OverloadedError          the request queue is full [503 + Retry-After]
        ├── ModelNotReadyError       the model exists but is not loaded (yet) [503]
        └── ModelServerError         a remote model server gave no usable answer [502]
            ├── ModelServerUnavailableError   unreachable or not ready [503]
            └── ModelServerTimeoutError       did not answer within the deadline [504]
"""

from __future__ import annotations


class ImgclfError(Exception):
    """Base class of every error imgclf raises on purpose."""


class ConfigError(ImgclfError, ValueError):
    """An option or setting is invalid; the message says which and what is allowed."""


class DatasetError(ImgclfError):
    """A dataset folder cannot be used as given."""


class DownloadError(DatasetError):
    """Downloading or verifying a dataset archive failed."""


class WeightsUnavailableError(ImgclfError):
    """Pretrained weights for a backbone cannot be loaded here."""


class BundleError(ImgclfError):
    """A model bundle is missing, corrupt or incompatible with this version of imgclf."""


class ChecksumMismatchError(BundleError):
    """An artifact's sha256 does not match the one recorded in the bundle manifest."""


class ExportError(ImgclfError):
    """An export failed, or the exported model disagrees with its source model."""


class InputError(ImgclfError, ValueError):
    """A bad input image or request: the caller's fault (transports answer a 4xx status)."""


class ImageDecodeError(InputError):
    """The bytes are not a decodable image (corrupt, truncated or empty)."""


class UnsupportedMediaError(InputError):
    """The content is not an image type imgclf accepts, or is sent in an unsupported encoding."""


class ImageTooLargeError(InputError):
    """The image has more pixels, or the payload more bytes, than allowed."""


class ImageTooCostlyError(InputError):
    """Decoding the image would cost too much: too many JPEG scans or frames, or too much time."""


class FetchError(InputError):
    """A URL input could not be fetched (timeout, HTTP error, too large, too many redirects)."""


class ForbiddenURLError(FetchError):
    """The URL's scheme or resolved address is refused (private, loopback, metadata, ...)."""


class ModelNotFoundError(InputError):
    """The request names a model or version this server does not serve."""


class RequestShapeError(InputError):
    """A JSON request of the wrong shape (missing or extra fields, wrong types)."""


class MethodNotAllowedError(InputError):
    """The request's HTTP method is not one the endpoint accepts."""


class ServingError(ImgclfError):
    """The serving path failed for a reason that is not the caller's fault."""


class OverloadedError(ServingError):
    """The request queue is full; retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelNotReadyError(ServingError):
    """The model (or the server) is not ready to answer yet; retry later."""


class ModelServerError(ServingError):
    """A remote model server answered with an error or with an answer that cannot be used."""


class ModelServerUnavailableError(ModelServerError):
    """A remote model server cannot be reached, or is not ready; retry shortly."""


class ModelServerTimeoutError(ModelServerError):
    """A remote model server did not answer within the deadline."""
