"""A BentoML service serving the bundle's ONNX model (run by bench_peers.py in its own env).

The usual BentoML 1.4 service: a ``@bentoml.service`` class whose ``@bentoml.api`` method takes
the upload as a file (``POST /classify``, multipart field ``file``, the request ``imgclf serve``'s
``/predict`` gets). Set by the environment: ``PEER_BUNDLE`` (the bundle), ``PEER_WORKERS``
(BentoML workers, default 1 as BentoML's) and ``PEER_ORT_THREADS`` (ONNX Runtime intra-op threads
per worker; 0 or unset: its default, one per core).

Usage::

    PEER_BUNDLE=DIR bentoml serve bentoml_service:Classifier --host 127.0.0.1 --port 3000
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
from peer_model import BundleModel


@bentoml.service(workers=int(os.environ.get("PEER_WORKERS", "1")))
class Classifier:
    """Top-1 class of one uploaded image."""

    def __init__(self) -> None:
        bundle = Path(os.environ["PEER_BUNDLE"])
        self.model = BundleModel(bundle, int(os.environ.get("PEER_ORT_THREADS", "0")))

    @bentoml.api
    def classify(self, file: Path) -> dict[str, object]:
        return self.model.classify(file.read_bytes())
