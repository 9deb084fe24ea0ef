"""A KServe custom Model serving the bundle's ONNX model (run by bench_peers.py in its own env).

The usual KServe custom-model program: a ``kserve.Model`` subclass whose ``load`` opens the model
and whose ``predict`` answers the V1 protocol, ``POST /v1/models/NAME:predict`` with
``{"instances": [{"image_bytes": {"b64": "..."}}]}``, and ``kserve.ModelServer().start`` with
KServe's own command-line flags (``--http_port``, ``--workers`` ...). ``PEER_ORT_THREADS`` sets
ONNX Runtime's intra-op threads per worker (0 or unset: its default, one per core).

Usage::

    python kserve_server.py --bundle DIR --http_port 8080 --grpc_port 8081 \\
        --model_name NAME [--workers 2]
"""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path
from typing import Any

import kserve
from peer_model import BundleModel


class ImageClassifier(kserve.Model):  # type: ignore[misc]
    """Top-1 class of each base64 JPEG instance."""

    def __init__(self, name: str, bundle: Path) -> None:
        super().__init__(name)
        self.bundle = bundle
        self.model: BundleModel | None = None
        self.load()

    def load(self) -> bool:
        self.model = BundleModel(self.bundle, int(os.environ.get("PEER_ORT_THREADS", "0")))
        self.ready = True
        return self.ready

    def __getstate__(self) -> dict[str, Any]:
        # KServe's --workers spawns processes and pickles the model into each: ONNX Runtime
        # sessions cannot be pickled, so each worker opens its own.
        state = self.__dict__.copy()
        state["model"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        assert self.model is not None
        instances = payload["instances"]
        return {
            "predictions": [
                self.model.classify(base64.b64decode(item["image_bytes"]["b64"]))
                for item in instances
            ]
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--bundle", type=Path, required=True)
    args, _ = parser.parse_known_args()
    kserve.ModelServer().start([ImageClassifier(args.model_name, args.bundle)])
