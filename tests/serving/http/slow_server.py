"""Run the REST service with an artificially slow model (for shutdown and overload tests).

Usage: ``python slow_server.py BUNDLE PORT DELAY_S [KEY=VALUE settings ...]``
"""

from __future__ import annotations

import sys
import time

import numpy as np

from imgclf.serving.http.app import run_server
from imgclf.serving.http.backends import EmbeddedBackend
from imgclf.serving.http.settings import ServeSettings


class SlowBackend(EmbeddedBackend):
    """The real embedded backend, sleeping ``delay_s`` per model call."""

    delay_s = 0.0

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return super().infer(pixels)


def main(argv: list[str]) -> None:
    bundle, port, delay = argv[0], int(argv[1]), float(argv[2])
    extra = dict(arg.split("=", 1) for arg in argv[3:])
    settings = ServeSettings(model=bundle, port=port, threads=1, **extra)  # type: ignore[arg-type]
    backend = SlowBackend.from_bundle(bundle, threads=1)
    backend.delay_s = delay
    run_server(settings, backend=backend)


if __name__ == "__main__":
    main(sys.argv[1:])
