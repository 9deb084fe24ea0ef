"""Finding model servers by name: restarts on a new address, several replicas, new replicas.

The gateway leaves this to gRPC (``round_robin`` over every address of the name, re-resolution
at most once a second, a server-side connection age). To change what a name resolves to, as
Compose and Kubernetes DNS do when a container restarts or a pod is added, the tests run a small
DNS server and name it in the target: ``dns://127.0.0.1:PORT/model-server.test:8001`` (gRPC's
c-ares resolver accepts a DNS server there). Model servers listen on 127.0.0.2 and 127.0.0.3,
both loopback addresses on Linux.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from imgclf.errors import ModelServerError
from imgclf.serving.gateway.client import RemoteBackend
from imgclf.serving.model_server.server import ModelServer, ModelServerSettings

pytestmark = pytest.mark.skipif(
    os.environ.get("GRPC_DNS_RESOLVER", "ares") != "ares",
    reason="needs gRPC's c-ares resolver (DNS server in the target)",
)

RED = np.full((1, 32, 32, 3), (220, 30, 30), dtype=np.uint8)
NAME = "model-server.test"


class StubDns:
    """A DNS server on 127.0.0.1 answering A queries from ``records``, NXDOMAIN otherwise."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                query, client = self._sock.recvfrom(512)
            except OSError:  # closed
                return
            self._sock.sendto(self._answer(query), client)

    def _answer(self, query: bytes) -> bytes:
        # Header (id, flags, counts), then one question: length-prefixed labels, type, class.
        end, labels = 12, []
        while query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]].decode())
            end += 1 + query[end]
        question = query[12 : end + 5]
        (qtype,) = struct.unpack(">H", query[end + 1 : end + 3])
        addresses = self.records.get(".".join(labels).lower())
        if addresses is None:  # response, recursion available, NXDOMAIN
            return query[:2] + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0) + question
        answers = addresses if qtype == 1 else []  # A records only (AAAA: none)
        reply = query[:2] + struct.pack(">HHHHH", 0x8180, 1, len(answers), 0, 0) + question
        for address in answers:  # name pointer to the question, A, IN, TTL 0, 4 bytes
            reply += struct.pack(">HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
        return reply

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def dns() -> Iterator[StubDns]:
    server = StubDns()
    yield server
    server.close()


class Servers:
    """Model servers, each with its own repository (and statistics), stopped at teardown."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.running: list[ModelServer] = []

    def start(self, host: str, port: int = 0, max_connection_age_s: float = 60) -> ModelServer:
        settings = ModelServerSettings(
            repository=self.repository,
            host=host,
            grpc_port=port,
            http_port=None,
            poll_interval_s=0,
            max_connection_age_s=max_connection_age_s,
        )
        server = ModelServer(settings)
        server.start()
        self.running.append(server)
        return server

    def stop(self, server: ModelServer) -> None:
        server.stop(grace_s=0)
        self.running.remove(server)


@pytest.fixture
def servers(repository: Path) -> Iterator[Servers]:
    started = Servers(repository)
    yield started
    for server in list(started.running):
        started.stop(server)


def inferences(server: ModelServer) -> int:
    """Rows the server has inferred, from its V2 statistics endpoint."""
    with grpcclient.InferenceServerClient(f"{server.settings.host}:{server.grpc_port}") as client:
        return int(client.get_inference_statistics("colors").model_stats[0].inference_count)


def infer_ok(backend: RemoteBackend) -> bool:
    try:
        return int(backend.infer(RED).argmax()) == 0
    except ModelServerError:
        return False


def wait_for(condition: Callable[[], bool], timeout_s: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


def connect(dns: StubDns, port: int) -> RemoteBackend:
    return RemoteBackend.from_target(
        f"dns://127.0.0.1:{dns.port}/{NAME}:{port}", timeout_s=3, retries=2, wait_s=10
    )


def test_server_restarted_on_a_new_address_is_found_within_seconds(
    dns: StubDns, servers: Servers
) -> None:
    dns.records[NAME] = ["127.0.0.2"]
    first = servers.start("127.0.0.2")
    backend = connect(dns, first.grpc_port)
    try:
        assert infer_ok(backend)
        servers.stop(first)
        del dns.records[NAME]  # the container is gone, its name with it
        down = time.monotonic()
        while time.monotonic() - down < 2:
            assert not infer_ok(backend)
            time.sleep(0.2)
        dns.records[NAME] = ["127.0.0.3"]  # it comes back elsewhere
        servers.start("127.0.0.3", first.grpc_port)
        recovery = wait_for(lambda: infer_ok(backend), timeout_s=40)
        print(f"gateway answered again {recovery:.2f} s after the server came back")
        assert recovery < 5  # gRPC's default 30 s between resolutions made this 20-30 s
    finally:
        backend.close()


def test_requests_are_spread_over_every_address_of_the_name(dns: StubDns, servers: Servers) -> None:
    first = servers.start("127.0.0.2")
    second = servers.start("127.0.0.3", first.grpc_port)
    dns.records[NAME] = ["127.0.0.2", "127.0.0.3"]
    backend = connect(dns, first.grpc_port)
    try:
        for _ in range(20):
            assert infer_ok(backend)
        counts = [inferences(first), inferences(second)]
        print(f"inferences per model server: {counts}")
        assert sum(counts) == 20
        assert min(counts) >= 5  # pick_first (gRPC's default) sent all 20 to one server
    finally:
        backend.close()


def test_a_replica_added_later_gets_requests_without_errors(dns: StubDns, servers: Servers) -> None:
    first = servers.start("127.0.0.2", max_connection_age_s=1)
    dns.records[NAME] = ["127.0.0.2"]
    backend = connect(dns, first.grpc_port)
    try:
        assert infer_ok(backend)
        second = servers.start("127.0.0.3", first.grpc_port)
        dns.records[NAME] = ["127.0.0.2", "127.0.0.3"]  # scaled up
        # The first server's connection age makes the gateway reconnect and resolve again.
        found = wait_for(lambda: infer_ok(backend) and inferences(second) > 0, timeout_s=15)
        print(f"new replica got its first request after {found:.2f} s")
    finally:
        backend.close()
