"""Run the model server: one repository, served over V2 gRPC and V2 REST side by side.

The REST port also answers TF Serving's REST API; TF Serving's gRPC API gets a port of its own
(``tfserving_grpc_port``), as it has in TF Serving (8500 beside REST's 8501).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.errors import ConfigError
from imgclf.serving.model_server.grpc_service import (
    DEFAULT_MAX_CONNECTION_AGE_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    create_grpc_server,
)
from imgclf.serving.model_server.repository import ModelRepository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelServerSettings:
    """How the model server runs. Ports set to 0 pick a free port; ``None`` disables REST.

    Attributes:
        repository: Model repository directory.
        host: Interface to bind (keep 127.0.0.1 unless the server sits behind a gateway).
        grpc_port: V2 gRPC port.
        http_port: V2 (and TF Serving) REST port, or None for gRPC only.
        tfserving_grpc_port: TF Serving gRPC port (PredictionService, ModelService), or None.
        poll_interval_s: Seconds between repository scans for new versions (0: load once).
        max_message_bytes: Largest gRPC message or REST body accepted and sent.
        threads: ONNX Runtime intra-op threads per model (None: ONNX Runtime's default).
        max_connection_age_s: gRPC connections are closed gracefully after about this long so
            balancing clients re-resolve and find new replicas (0: never).
    """

    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int | None = 8000
    tfserving_grpc_port: int | None = None
    poll_interval_s: float = 5.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    threads: int | None = None
    max_connection_age_s: float = DEFAULT_MAX_CONNECTION_AGE_S

    def __post_init__(self) -> None:
        if not Path(self.repository).is_dir():
            raise ConfigError(
                f"model repository {self.repository} is not a directory; create one with "
                "`imgclf export BUNDLE --format triton --out DIR`"
            )
        if self.max_message_bytes < 1024 * 1024:
            raise ConfigError("max_message_bytes must be at least 1 MiB")
        if self.poll_interval_s < 0:
            raise ConfigError("poll_interval_s must be >= 0")
        if self.max_connection_age_s < 0:
            raise ConfigError("max_connection_age_s must be >= 0 (0: unlimited)")


class ModelServer:
    """The repository plus its gRPC and REST servers; :meth:`start` returns once they listen."""

    def __init__(self, settings: ModelServerSettings) -> None:
        self.settings = settings
        self.repository = ModelRepository(Path(settings.repository), threads=settings.threads)
        self.grpc_port = 0
        self.http_port: int | None = None
        self.tfserving_grpc_port: int | None = None
        self._grpc: Any = None
        self._tfserving: Any = None
        self._uvicorn: Any = None
        self._http_thread: threading.Thread | None = None

    def start(self) -> None:
        """Load the repository, start polling, and start listening."""
        settings = self.settings
        self.repository.start_polling(settings.poll_interval_s)
        self._grpc, self.grpc_port = create_grpc_server(
            self.repository,
            host=settings.host,
            port=settings.grpc_port,
            max_message_bytes=settings.max_message_bytes,
            max_connection_age_s=settings.max_connection_age_s,
        )
        self._grpc.start()
        logger.info("V2 gRPC listening on %s:%d", settings.host, self.grpc_port)
        if settings.tfserving_grpc_port is not None:
            self._start_tfserving(settings.tfserving_grpc_port)
        if settings.http_port is not None:
            self._start_http(settings.http_port)

    def _start_tfserving(self, port: int) -> None:
        from imgclf.serving.model_server.tfserving_grpc import create_tfserving_server

        self._tfserving, self.tfserving_grpc_port = create_tfserving_server(
            self.repository,
            host=self.settings.host,
            port=port,
            max_message_bytes=self.settings.max_message_bytes,
            max_connection_age_s=self.settings.max_connection_age_s,
        )
        self._tfserving.start()
        logger.info("TF Serving gRPC listening on %s:%d", self.settings.host, port)

    def _start_http(self, port: int) -> None:
        import socket

        import uvicorn

        from imgclf.serving.header_limits import (
            DEFAULT_MAX_HEADER_BYTES,
            DEFAULT_MAX_HEADERS,
            uvicorn_options,
        )
        from imgclf.serving.model_server.rest import create_rest_app

        app = create_rest_app(self.repository, max_body_bytes=self.settings.max_message_bytes)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, port))
        self.http_port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            **uvicorn_options(DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS),
        )
        self._uvicorn = uvicorn.Server(config)
        self._http_thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, name="v2-http", daemon=True
        )
        self._http_thread.start()
        while not self._uvicorn.started and self._http_thread.is_alive():
            threading.Event().wait(0.01)
        logger.info("V2 REST listening on %s:%d", self.settings.host, self.http_port)

    def wait(self) -> None:
        """Block until the gRPC server stops (Ctrl-C or :meth:`stop`)."""
        self._grpc.wait_for_termination()

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop listening (in-flight calls get ``grace_s``), then unload every model."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        for server in (self._tfserving, self._grpc):
            if server is not None:
                server.stop(grace_s).wait()
        if self._http_thread is not None:
            self._http_thread.join(timeout=grace_s + 5)
        self.repository.close()
