"""The exceptions imgclf raises, in one place.

Every error the package raises on purpose derives from :class:`ImgclfError`, so callers can catch
one type. Transport layers (HTTP, gRPC, Lambda) map these to status codes at the edge; nothing below
them knows about status codes.

Hierarchy::

    ImgclfError
    ├── ConfigError                  bad option or setting (unknown backbone, export option, ...)
    ├── DatasetError                 a dataset folder cannot be used (no classes, empty split, ...)
    │   └── DownloadError            fetching or verifying a dataset failed
    ├── WeightsUnavailableError      pretrained weights cannot be reached (offline, unknown model)
    ├── BundleError                  a model bundle is missing, corrupt or incompatible
    │   └── ChecksumMismatchError    an artifact's sha256 differs from the manifest
    ├── ExportError                  an export failed or did not pass its parity check
    ├── InputError                   a bad input image or request (maps to HTTP 4xx)
    │   ├── ImageDecodeError         not a decodable image: corrupt, truncated, zero bytes (400)
    │   ├── UnsupportedMediaError    content is not a supported image type (415)
    │   ├── ImageTooLargeError       too many pixels or bytes (413)
    │   ├── FetchError               a URL input could not be fetched safely (400)
    │   │   └── ForbiddenURLError    the URL points at a refused address or scheme (400/403)
    │   └── ModelNotFoundError       no such model or version on this server (404)
    └── ServingError                 the serving path failed (maps to HTTP 5xx)
        ├── OverloadedError          the request queue is full (503 + Retry-After)
        ├── ModelNotReadyError       the model exists but is not loaded (yet) (503)
        └── ModelServerError         a remote model server is unavailable or failed (502/503/504)
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
    """A bad input image or request; transports answer it with a 4xx status."""

    status_code: int = 400


class ImageDecodeError(InputError):
    """The bytes are not a decodable image (corrupt, truncated or empty)."""

    status_code = 400


class UnsupportedMediaError(InputError):
    """The content is not an image type imgclf accepts."""

    status_code = 415


class ImageTooLargeError(InputError):
    """The image has more pixels, or the payload more bytes, than allowed."""

    status_code = 413


class FetchError(InputError):
    """A URL input could not be fetched (timeout, HTTP error, too large, too many redirects)."""

    status_code = 400


class ForbiddenURLError(FetchError):
    """The URL's scheme or resolved address is refused (private, loopback, metadata, ...)."""

    status_code = 400


class ModelNotFoundError(InputError):
    """The request names a model or version this server does not serve."""

    status_code = 404


class ServingError(ImgclfError):
    """The serving path failed for a reason that is not the caller's fault."""

    status_code: int = 500


class OverloadedError(ServingError):
    """The request queue is full; retry later."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelNotReadyError(ServingError):
    """The model (or the server) is not ready to answer yet; retry later."""

    status_code = 503


class ModelServerError(ServingError):
    """A remote model server is unreachable, too slow, or answered with an error."""

    status_code = 503

    def __init__(self, message: str, status_code: int = 503) -> None:
        super().__init__(message)
        self.status_code = status_code
