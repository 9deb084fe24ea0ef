"""Kubernetes, KServe and compose manifests: schema-valid offline, and consistent with imgclf.

Every rendered kustomization (base and overlays) is validated against the Kubernetes JSON schemas
shipped by ``kubernetes-validate`` (strict: unknown fields fail), then checked for what a
production deployment needs: probes, requests and limits, a locked-down security context,
autoscaling, Services that select real pods and ports, and settings imgclf actually reads.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import (
    COMPOSE_FILE,
    K8S_DIR,
    KSERVE_FILE,
    KUBERNETES_VERSION,
    load_yaml_documents,
)
from deploy_helpers import kustomize as render_kustomization

from imgclf.cli import build_parser
from imgclf.serving.http.settings import ServeSettings

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (the dev extra has it)"
)

KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod", "overlays/s3-model")
NAMESPACED_EXEMPT = {"Namespace"}


@functools.cache
def _render(directory: Path) -> list[dict[str, Any]]:
    return render_kustomization(directory)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """Rendered documents of a kustomization (rendered once per session; a fresh copy each call)."""
    return copy.deepcopy(_render(directory))


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    """(name, documents) of each kustomization, rendered once."""
    name: str = request.param
    return name, kustomize(K8S_DIR / name)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Documents of one kind."""
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    """The one document of a kind whose name starts with ``prefix`` (generated names get hashes)."""
    (doc,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"].startswith(prefix)]
    return doc


def validate(doc: dict[str, Any]) -> None:
    """Strict schema validation; the error names the resource."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        pytest.fail(f"{where} is not a valid {KUBERNETES_VERSION} resource: {exc.message}")


def test_every_rendered_resource_is_schema_valid(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = rendered
    kinds = sorted(doc["kind"] for doc in docs)
    for kind in ("ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service"):
        assert kind in kinds, f"{name}: no {kind}"
    for doc in docs:
        validate(doc)


def test_schema_validation_catches_mistakes() -> None:
    docs = kustomize(K8S_DIR / "base")
    deployment = named(docs, "Deployment", "imgclf-gateway")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRoot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]
    hpa["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def test_pods_are_probed_bounded_and_locked_down(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = rendered
    for deployment in by_kind(docs, "Deployment"):
        where = f"{name}: {deployment['metadata']['name']}"
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] != 0, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, where
        for container in pod["containers"]:
            ports = {p["name"] for p in container["ports"]}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[probe]["httpGet"]["port"] in ports, f"{where}: {probe}"
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, where
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"


def test_services_and_autoscalers_point_at_real_deployments(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = rendered
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    for service in by_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        matches = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"{name}: Service {service['metadata']['name']} selects {matches}"
        ports = {
            p["name"]
            for c in matches[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{name}: {port} targets an unknown port"
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments, f"{name}: {hpa}"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert {
        h["spec"]["scaleTargetRef"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")
    } == set(deployments)


def test_gateway_settings_come_from_a_configmap_imgclf_understands(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = rendered
    gateway = named(docs, "Deployment", "imgclf-gateway")
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    (source,) = container["envFrom"]
    config = named(docs, "ConfigMap", "imgclf-gateway-config")
    assert source["configMapRef"]["name"] == config["metadata"]["name"], name
    settings = ServeSettings(**settings_from_env(config["data"]))
    assert settings.model_server_url == "grpc://imgclf-model-server:8001"
    service = named(docs, "Service", "imgclf-model-server")
    assert service["spec"]["type"] == "ClusterIP"
    assert 8001 in {p["port"] for p in service["spec"]["ports"]}


def settings_from_env(env: dict[str, str]) -> dict[str, str]:
    """``IMGCLF_*`` variables as ServeSettings keyword arguments; unknown ones fail the test."""
    fields = set(ServeSettings.model_fields)
    kwargs = {}
    for key, value in env.items():
        assert key.startswith("IMGCLF_"), f"{key}: not an imgclf setting"
        field = key.removeprefix("IMGCLF_").lower()
        assert field in fields, f"{key}: imgclf serve has no setting {field!r}"
        kwargs[field] = value
    return kwargs


def test_only_the_gateway_reaches_the_model_server(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = rendered
    (policy,) = by_kind(docs, "NetworkPolicy")
    pod_labels = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in by_kind(docs, "Deployment")
    }
    selected = [
        deployment
        for deployment, labels in pod_labels.items()
        if policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert selected == ["imgclf-model-server"], name
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "no namespace or IP peers: the gateway pods only"
    allowed = [
        deployment
        for deployment, labels in pod_labels.items()
        if peer["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert allowed == ["imgclf-gateway"], name
    assert [p["port"] for p in rule["ports"]] == ["grpc"]
    gateway_config = named(docs, "ConfigMap", "imgclf-gateway-config")["data"]
    assert gateway_config["IMGCLF_MODEL_SERVER_URL"].endswith(":8001")  # the port let through


def test_s3_overlay_pulls_the_model_at_start_up() -> None:
    docs = kustomize(K8S_DIR / "overlays/s3-model")
    deployment = named(docs, "Deployment", "imgclf-model-server")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(["model-server", *container["args"]])
    assert args.bundle.startswith("s3://") and args.bundle.endswith("/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for path in (str(args.repository), str(args.model_cache)):
        assert "emptyDir" in volumes[mounts[path]], f"{path} must be writable (read-only root)"
    account = named(docs, "ServiceAccount", "imgclf-model-server")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    prod = named(kustomize(K8S_DIR / "overlays/prod"), "Deployment", "imgclf-model-server")
    assert prod["spec"]["replicas"] == deployment["spec"]["replicas"]


def test_model_server_arguments_are_accepted_by_the_cli() -> None:
    docs = kustomize(K8S_DIR / "base")
    deployment = named(docs, "Deployment", "imgclf-model-server")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(["model-server", *container["args"]])
    assert (args.host, args.grpc_port, args.http_port) == ("0.0.0.0", 8001, 8000)


def test_overlays_expose_the_gateway_and_pick_images() -> None:
    dev, prod = kustomize(K8S_DIR / "overlays/dev"), kustomize(K8S_DIR / "overlays/prod")
    assert named(dev, "Service", "imgclf-gateway")["spec"]["type"] == "NodePort"
    assert named(prod, "Service", "imgclf-gateway")["spec"]["type"] == "LoadBalancer"
    for docs, namespace, registry in (
        (dev, "imgclf-dev", "localhost/"),
        (prod, "imgclf", "ghcr.io/"),
    ):
        for doc in docs:
            if doc["kind"] not in NAMESPACED_EXEMPT:
                assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]
        images = [
            c["image"]
            for d in by_kind(docs, "Deployment")
            for c in d["spec"]["template"]["spec"]["containers"]
        ]
        assert len(images) == 2 and all(i.startswith(registry) for i in images), images
    assert all(d["spec"]["replicas"] >= 2 for d in by_kind(prod, "Deployment"))
    assert all(h["spec"]["minReplicas"] >= 2 for h in by_kind(prod, "HorizontalPodAutoscaler"))


# ---- KServe -------------------------------------------------------------------------------------


def kserve_service() -> dict[str, Any]:
    """The InferenceService document."""
    (doc,) = load_yaml_documents(KSERVE_FILE)
    return doc


def test_kserve_inference_service_structure() -> None:
    isvc = kserve_service()
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    assert set(isvc["spec"]) == {"predictor", "transformer"}
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton"
    assert model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2"
    assert re.match(r"^(s3|gs|pvc|https|hdfs|azure)://", model["storageUri"])
    assert [p["name"] for p in model["ports"]] == ["h2c"], "gRPC to Triton needs an h2c port"
    (transformer,) = isvc["spec"]["transformer"]["containers"]
    assert transformer["name"] == "kserve-container"
    assert "imgclf-serve" in transformer["image"]
    assert settings_from_env({e["name"]: e["value"] for e in transformer["env"]})


def test_kserve_containers_are_valid_kubernetes_containers() -> None:
    isvc = kserve_service()
    model = isvc["spec"]["predictor"]["model"]
    predictor = {
        "name": "kserve-container",
        "image": "tritonserver",
        "ports": model["ports"],
        "resources": model["resources"],
    }
    for container in (predictor, *isvc["spec"]["transformer"]["containers"]):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "check"},
            "spec": {"containers": [container]},
        }
        validate(pod)


def test_kserve_transformer_turns_the_predictor_host_into_a_grpc_target(tmp_path: Path) -> None:
    """KServe appends --model_name/--predictor_host/--http_port; the wrapper must cope."""
    (transformer,) = kserve_service()["spec"]["transformer"]["containers"]
    fake = tmp_path / "imgclf"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n', encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    for injected, target in (
        (
            ["--model_name", "m", "--predictor_host", "isvc-predictor.ns", "--http_port", "8080"],
            "grpc://isvc-predictor.ns:80",
        ),
        (["--predictor_host=isvc-predictor.ns:9000"], "grpc://isvc-predictor.ns:9000"),
    ):
        result = subprocess.run(
            [*transformer["command"], *injected],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
            check=True,
        )
        argv = result.stdout.split()
        args = build_parser().parse_args(argv)
        assert args.command == "serve" and args.model_server_url == target
        assert (args.host, args.port) == ("0.0.0.0", 8080)
    missing = subprocess.run(
        transformer["command"], capture_output=True, text=True, env=env, timeout=10, check=False
    )
    assert missing.returncode == 2 and "predictor_host" in missing.stderr


# ---- KubeRay -------------------------------------------------------------------------------------


def test_rayjob_runs_a_bulk_prediction_imgclf_accepts() -> None:
    import shlex

    from imgclf.inference.ray_engine import parse_actors

    docs = load_yaml_documents(K8S_DIR / "ray" / "bulk-rayjob.yaml")
    (job,) = [d for d in docs if d["kind"] == "RayJob"]
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    validate(account)
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    command = shlex.split(spec["entrypoint"])
    assert command[:2] == ["imgclf", "predict"]
    args = build_parser().parse_args(command[1:])
    assert (args.engine, args.address) == ("ray", "auto")
    assert args.model.startswith("s3://") and args.output.startswith("s3://")
    assert all(source.startswith("s3://") for source in args.inputs)
    cluster = spec["rayClusterSpec"]
    assert re.fullmatch(r"2\.\d+\.\d+", cluster["rayVersion"]), "the image's Ray version"
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
               "spec": group["template"]["spec"]}  # fmt: skip
        validate(pod)
        assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in pod["spec"]["containers"]:
            assert container["resources"]["requests"] == container["resources"]["limits"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    _, high = parse_actors(args.actors)
    worker_cpus = int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert high <= workers["maxReplicas"] * worker_cpus // args.actor_cpus, "actors that fit"


# ---- Kubeflow PyTorchJob (multi-machine training) ------------------------------------------------


def _claim_of(
    path: str, pod: dict[str, Any], claims: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The PersistentVolumeClaim a pod's ``path`` lives on, and the container's mount of it."""
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return claims[volume["persistentVolumeClaim"]["claimName"]], mount


def test_pytorchjob_runs_torchrun_with_a_training_imgclf_accepts() -> None:
    """Every pod runs the same torchrun line: c10d rendezvous at the master, ``imgclf train``
    with --auto-resume, processes x threads within the pod's CPUs, storage every rank can use."""
    run = pytest.importorskip("torch.distributed.run", reason="needs torch (the train extra)")
    from imgclf.training.launch import check_processes

    docs = load_yaml_documents(K8S_DIR / "training" / "pytorchjob.yaml")
    (job,) = [d for d in docs if d["kind"] == "PyTorchJob"]
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for claim in claims.values():
        validate(claim)
    assert job["apiVersion"] == "kubeflow.org/v1"
    assert job["spec"]["runPolicy"]["backoffLimit"] >= 1
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    nodes = sum(spec["replicas"] for spec in replicas.values())
    lines = set()
    for role, spec in replicas.items():
        assert spec["restartPolicy"] == "OnFailure", role
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
               "spec": spec["template"]["spec"]}  # fmt: skip
        validate(pod)
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["spec"]["containers"]
        assert container["name"] == "pytorch", "the operator finds the container by this name"
        limits = container["resources"]["limits"]
        assert container["resources"]["requests"] == limits
        line = [*container["command"], *container["args"]]
        lines.add(tuple(line))
        assert line[0] == "torchrun"
        launcher = run.get_args_parser().parse_args(line[1:])
        assert launcher.nnodes == str(nodes)
        assert launcher.rdzv_backend == "c10d"
        assert launcher.rdzv_endpoint == "$(MASTER_ADDR):$(MASTER_PORT)"  # set by the operator
        assert launcher.module and launcher.training_script == "imgclf"
        args = build_parser().parse_args(launcher.training_script_args)
        assert args.command == "train" and args.auto_resume and args.nproc is None
        check_processes(
            int(launcher.nproc_per_node),
            threads=args.threads,
            batch_size=args.batch_size // nodes,  # the batch is split over every process
            gpus=0,
            cpus=int(limits["cpu"]),
        )
        data_claim, data_mount = _claim_of(args.data, pod["spec"], claims)
        assert data_mount.get("readOnly") is True
        assert {"ReadOnlyMany", "ReadWriteMany"} & set(data_claim["spec"]["accessModes"])
        out_claim, out_mount = _claim_of(args.out, pod["spec"], claims)
        assert not out_mount.get("readOnly")
        # Rank 0, on whichever pod, writes the checkpoints and the bundle the others resume from.
        assert out_claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert len(lines) == 1, "every pod runs the same command"


# ---- compose ------------------------------------------------------------------------------------


def test_compose_stack_is_healthchecked_and_local_only() -> None:
    (compose,) = load_yaml_documents(COMPOSE_FILE)
    services = compose["services"]
    assert set(services) == {"gateway", "model-server"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        dockerfile = (
            COMPOSE_FILE.parent / service["build"]["context"] / service["build"]["dockerfile"]
        )
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} must bind loopback only"
    assert "ports" not in services["model-server"], "the model server stays internal"
    gateway = services["gateway"]
    assert gateway["depends_on"] == {"model-server": {"condition": "service_healthy"}}
    args = build_parser().parse_args(["serve", *gateway["command"]])
    assert args.model_server_url == "grpc://model-server:8001"
    settings_from_env(gateway["environment"])
