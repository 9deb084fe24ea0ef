"""The Kubernetes base under ``podman kube play``: its Deployments and ConfigMap start and answer.

A temporary overlay on ``deploy/k8s/base`` swaps in the session's local images, publishes the
containers' ports on 127.0.0.1 only (podman publishes every containerPort otherwise), and points
the gateway at the model server's pod name (podman has no Services: pods resolve by pod name). Only
the kinds podman runs are played (ConfigMap, Deployment); the rest is covered by the schema tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy_helpers import (
    CLOTHING_CLASSES,
    K8S_DIR,
    Images,
    assert_mostly_right,
    classify,
    clothing_test_images,
    container_logs,
    embedded_answers,
    free_port,
    kustomize,
    require_podman,
    run,
    wait_until_ready,
)

pytestmark = [pytest.mark.containers, pytest.mark.slow]

PLAYABLE = {"ConfigMap", "Deployment"}


@dataclass(frozen=True)
class Played:
    """The pods started from the manifests."""

    gateway_url: str
    model_server_url: str
    podman: str
    pods: list[str]


def write_overlay(directory: Path, images: Images, ports: dict[str, int], extra: str = "") -> Path:
    """A kustomization over the base with local images and loopback-only host ports."""
    directory.mkdir(parents=True, exist_ok=True)
    base = os.path.relpath(K8S_DIR / "base", directory)
    serve_name, serve_tag = images.serve.rsplit(":", 1)
    server_name, server_tag = images.model_server.rsplit(":", 1)

    def host_ports(deployment: str, indexes: dict[int, int]) -> str:
        ops = []
        for index, port in indexes.items():
            path = f"/spec/template/spec/containers/0/ports/{index}"
            ops.append(f"      - {{op: add, path: {path}/hostPort, value: {port}}}")
            ops.append(f"      - {{op: add, path: {path}/hostIP, value: 127.0.0.1}}")
        return (
            f"  - target: {{kind: Deployment, name: {deployment}}}\n    patch: |-\n"
            + "\n".join(ops)
            + "\n"
        )

    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{base}]\n"
        "images:\n"
        f"  - {{name: ghcr.io/imgclf/imgclf-serve, newName: {serve_name}, newTag: {serve_tag}}}\n"
        f"  - {{name: ghcr.io/imgclf/imgclf-model-server, newName: {server_name}, "
        f"newTag: {server_tag}}}\n"
        "patches:\n"
        + host_ports("imgclf-gateway", {0: ports["gateway"]})
        + host_ports("imgclf-model-server", {0: ports["model-http"], 1: ports["model-grpc"]})
        + extra,
        encoding="utf-8",
    )
    return directory


def playable(docs: list[dict[str, Any]], names: set[str]) -> list[dict[str, Any]]:
    """The documents podman can play whose name starts with one of ``names``."""
    return [
        doc
        for doc in docs
        if doc["kind"] in PLAYABLE and any(doc["metadata"]["name"].startswith(n) for n in names)
    ]


def play(podman: str, path: Path, docs: list[dict[str, Any]], network: str) -> list[str]:
    """``podman kube play`` some documents; returns the names of the pods started."""
    path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    run([podman, "kube", "play", "--replace", "--network", network, str(path)], timeout=120)
    pods = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            name = doc["metadata"]["name"]
            found = run(
                [podman, "pod", "ps", "--filter", f"name=^{name}-pod", "--format", "{{.Name}}"]
            ).stdout.split()
            assert len(found) == 1, f"{name}: pods {found}"
            pods.extend(found)
    return pods


@pytest.fixture(scope="module")
def played(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    """Model server first (to learn its pod name), then the gateway; always torn down."""
    podman = require_podman()
    workdir = tmp_path_factory.mktemp("kube-play")
    network = f"imgclf-kube-test-{os.getpid()}"
    ports = {name: free_port() for name in ("gateway", "model-http", "model-grpc")}
    files: list[Path] = []
    pods: list[str] = []
    run([podman, "network", "create", network])
    try:
        docs = kustomize(write_overlay(workdir / "first", images, ports))
        files.append(workdir / "model-server.yaml")
        pods += play(podman, files[-1], playable(docs, {"imgclf-model-server"}), network)
        config = (
            "  - target: {kind: ConfigMap, name: imgclf-gateway-config}\n    patch: |-\n"
            "      - op: replace\n        path: /data/IMGCLF_MODEL_SERVER_URL\n"
            f"        value: grpc://{pods[0]}:8001\n"
        )
        docs = kustomize(write_overlay(workdir / "second", images, ports, extra=config))
        files.append(workdir / "gateway.yaml")
        pods += play(
            podman, files[-1], playable(docs, {"imgclf-gateway", "imgclf-gateway-config"}), network
        )
        result = Played(
            gateway_url=f"http://127.0.0.1:{ports['gateway']}",
            model_server_url=f"http://127.0.0.1:{ports['model-http']}",
            podman=podman,
            pods=pods,
        )
        containers = [
            f"{pod}-{c}" for pod, c in zip(pods, ("model-server", "gateway"), strict=True)
        ]

        def logs() -> str:
            return container_logs(podman, containers)

        wait_until_ready(f"{result.model_server_url}/v2/health/ready", 120, describe=logs)
        wait_until_ready(f"{result.gateway_url}/ready", 120, describe=logs)
        yield result
    finally:
        for path in reversed(files):
            run([podman, "kube", "down", str(path)], check=False, timeout=120)
        run([podman, "network", "rm", "--force", network], check=False)


def test_pods_run_with_the_manifests_security_context(played: Played) -> None:
    for pod in played.pods:
        container = f"{pod}-{'gateway' if 'gateway' in pod else 'model-server'}"
        user = run([played.podman, "exec", container, "id", "-u"]).stdout.strip()
        assert user == "10001"
        write = run([played.podman, "exec", container, "touch", "/opt/venv/x"], check=False)
        assert write.returncode != 0, "the root filesystem should be read-only"
        run([played.podman, "exec", container, "touch", "/tmp/writable"])


def test_model_server_pod_serves_the_v2_protocol(played: Played) -> None:
    name = httpx.get(f"{played.gateway_url}/model", timeout=10).json()["name"]
    assert httpx.get(f"{played.model_server_url}/v2/health/live", timeout=10).status_code == 200
    ready = httpx.get(f"{played.model_server_url}/v2/models/{name}/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    metadata = httpx.get(f"{played.model_server_url}/v2/models/{name}", timeout=10).json()
    assert metadata["name"] == name and metadata["inputs"], metadata


def test_gateway_pod_classifies_clothing_through_the_model_server_pod(
    played: Played, images: Images
) -> None:
    samples = clothing_test_images(per_class=3)
    answers = classify(played.gateway_url, samples)
    assert_mostly_right(answers, embedded_answers(images.context, samples), min_accuracy=0.6)
    model = httpx.get(f"{played.gateway_url}/model", timeout=10).json()
    assert sorted(model["labels"]) == sorted(CLOTHING_CLASSES)
