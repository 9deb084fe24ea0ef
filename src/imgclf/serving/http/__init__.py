"""The REST service behind ``imgclf serve``: REST API, KServe V2 and TF Serving paths, web page.

Build it with :func:`create_app` and serve it with any ASGI server::

    from imgclf.serving.http import ServeSettings, create_app

    app = create_app(ServeSettings(model="runs/clothing"))

The names load on first use, so importing this package (as ``imgclf serve``'s command module
does) works without the ``serve`` extra; FastAPI is imported only when the app is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf._lazy import lazy_exports

if TYPE_CHECKING:
    from imgclf.serving.http.app import create_app
    from imgclf.serving.http.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]

_LAZY: dict[str, str] = {
    "create_app": "imgclf.serving.http.app",
    "ServeSettings": "imgclf.serving.http.settings",
}

__getattr__ = lazy_exports(__name__, _LAZY)
