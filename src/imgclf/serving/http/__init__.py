"""The REST service behind ``imgclf serve``: REST API, KServe V2 and TF Serving paths, web page.

Build it with :func:`create_app` and serve it with any ASGI server::

    from imgclf.serving.http import ServeSettings, create_app

    app = create_app(ServeSettings(model="runs/clothing"))
"""

from __future__ import annotations

from imgclf.serving.http.app import create_app
from imgclf.serving.http.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
