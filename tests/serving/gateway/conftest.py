"""Fixtures: a repository, and model servers with real or deliberately faulty V2 services."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

pytest.importorskip("tritonclient.grpc")

from tritonclient.grpc import service_pb2_grpc

from imgclf.export.triton import export_triton_repository
from imgclf.serving.model_server.grpc_service import InferenceServicer, server_options
from imgclf.serving.model_server.repository import ModelRepository

ServicerFactory = Callable[[ModelRepository], InferenceServicer]


@pytest.fixture
def repository(tiny_bundle: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    export_triton_repository(tiny_bundle, repo, max_batch_size=8, max_queue_delay_us=500)
    return repo


@pytest.fixture
def models(repository: Path) -> Iterator[ModelRepository]:
    loaded = ModelRepository(repository)
    loaded.poll()
    yield loaded
    loaded.close()


class GrpcServers:
    """Starts V2 gRPC servers on loopback; stops whatever is left at teardown."""

    def __init__(self, models: ModelRepository) -> None:
        self.models = models
        self.running: list[grpc.Server] = []

    def start(
        self, servicer: ServicerFactory = InferenceServicer, port: int = 0
    ) -> tuple[grpc.Server, int]:
        server = grpc.server(futures.ThreadPoolExecutor(8), options=server_options(64 << 20))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer(self.models), server)
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        assert bound, f"port {port} is busy"
        server.start()
        self.running.append(server)
        return server, bound

    def stop_all(self) -> None:
        for server in self.running:
            server.stop(0).wait()


@pytest.fixture
def grpc_servers(models: ModelRepository) -> Iterator[GrpcServers]:
    servers = GrpcServers(models)
    yield servers
    servers.stop_all()
