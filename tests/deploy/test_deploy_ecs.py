"""deploy/ecs/template.yaml: cfn-lint clean, and the task runs the serving image as compose does.

The task definition must not drift from what the container tests prove: its health check is the
serving image's HEALTHCHECK (which deploy/compose.yaml's stack exercises), it keeps the image's
entrypoint, and its settings are ones ``imgclf serve`` accepts. The health check command is also
run for real against a local ``imgclf serve``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import (
    COMPOSE_FILE,
    DEPLOY_DIR,
    DOCKER_DIR,
    exec_form,
    free_port,
    load_yaml_documents,
    parse_dockerfile,
    wait_until_ready,
)

from cloudformation import cfn_lint, load_template
from imgclf.serving.http.settings import ServeSettings

TEMPLATE = DEPLOY_DIR / "ecs" / "template.yaml"

pytest.importorskip("cfnlint.decode", reason="needs cfn-lint (dev extra)")


def resources() -> dict[str, Any]:
    found: dict[str, Any] = load_template(TEMPLATE)["Resources"]
    return found


def containers() -> dict[str, dict[str, Any]]:
    """Container definitions by name; conditional ones as their 'true' branch."""
    found = {}
    for entry in resources()["TaskDefinition"]["Properties"]["ContainerDefinitions"]:
        container = entry["Fn::If"][1] if "Fn::If" in entry else entry
        found[container["Name"]] = container
    return found


def serve_image_healthcheck() -> tuple[list[str], dict[str, str]]:
    """The serving image's HEALTHCHECK: exec-form command and its --options."""
    final = parse_dockerfile(DOCKER_DIR / "serve.Dockerfile").stages[-1]
    (healthcheck,) = final.args("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    pairs = (option.removeprefix("--").split("=") for option in options.split())
    return exec_form(command), dict(pairs)


@pytest.mark.slow
def test_cfn_lint_passes() -> None:
    result = cfn_lint(TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_cfn_lint_catches_a_broken_task_definition(tmp_path: Path) -> None:
    """The lint checks the ECS properties (so the test above can fail)."""
    broken = tmp_path / "template.yaml"
    text = TEMPLATE.read_text()
    assert "      NetworkMode: awsvpc\n" in text
    broken.write_text(text.replace("      NetworkMode: awsvpc\n", "      NetworkMode: awsvcp\n"))
    result = cfn_lint(broken)
    assert result.returncode != 0
    assert "awsvcp" in result.stdout


def test_health_check_is_the_serving_images_word_for_word() -> None:
    serve = containers()["serve"]
    command, options = serve_image_healthcheck()
    assert serve["HealthCheck"]["Command"] == ["CMD", *command]
    for key, option in (("Interval", "interval"), ("Timeout", "timeout"), ("Retries", "retries")):
        assert f"{serve['HealthCheck'][key]}" == options[option].removesuffix("s"), key
    assert f"{serve['HealthCheck']['StartPeriod']}s" == options["start-period"]
    # The compose stack's gateway, proven by the container tests, is probed on the same route.
    (compose,) = load_yaml_documents(COMPOSE_FILE)
    assert "/ready'" in compose["services"]["gateway"]["healthcheck"]["test"][-1]
    assert "/ready" in command[-1]


def test_task_runs_the_images_own_serve_command() -> None:
    serve = containers()["serve"]
    assert "EntryPoint" not in serve and "Command" not in serve
    final = parse_dockerfile(DOCKER_DIR / "serve.Dockerfile").stages[-1]
    assert exec_form(final.args("ENTRYPOINT")[0]) == ["imgclf", "serve"]
    assert final.args("EXPOSE") == ["8000"]
    (port,) = serve["PortMappings"]
    assert port["ContainerPort"] == 8000
    environment = {}
    for variable in serve["Environment"]:
        item = variable["Fn::If"][1] if "Fn::If" in variable else variable
        environment[item["Name"]] = item["Value"]
    assert environment == {
        "IMGCLF_PORT": "8000",
        "IMGCLF_MODEL": "/model",
        "IMGCLF_TRUSTED_PROXIES": {"Ref": "TrustedProxyCidrs"},
    }
    environment["IMGCLF_TRUSTED_PROXIES"] = load_template(TEMPLATE)["Parameters"][
        "TrustedProxyCidrs"
    ]["Default"]
    fields = {name.removeprefix("IMGCLF_").lower(): value for name, value in environment.items()}
    ServeSettings(**fields)  # type: ignore[arg-type]  # strings, validated as the env would be


def test_service_is_fargate_behind_the_load_balancer_on_ready() -> None:
    found = resources()
    task = found["TaskDefinition"]["Properties"]
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    assert task["NetworkMode"] == "awsvpc"
    service = found["Service"]["Properties"]
    assert service["LaunchType"] == "FARGATE"
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
        "Enable": True,
        "Rollback": True,
    }
    (balancer,) = service["LoadBalancers"]
    assert balancer == {
        "ContainerName": "serve",
        "ContainerPort": 8000,
        "TargetGroupArn": {"Ref": "TargetGroup"},
    }
    group = found["TargetGroup"]["Properties"]
    assert (group["TargetType"], group["Port"], group["HealthCheckPath"]) == ("ip", 8000, "/ready")
    # In-flight requests drain before the container is stopped.
    (delay,) = group["TargetGroupAttributes"]
    assert int(delay["Value"]) < containers()["serve"]["StopTimeout"]
    ingress = found["ServiceSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert ingress == [
        {
            "IpProtocol": "tcp",
            "FromPort": 8000,
            "ToPort": 8000,
            "SourceSecurityGroupId": {"Ref": "LoadBalancerSecurityGroup"},
        }
    ]


def test_every_container_logs_to_the_stacks_log_group() -> None:
    assert resources()["LogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    for name, container in containers().items():
        options = container["LogConfiguration"]["Options"]
        assert container["LogConfiguration"]["LogDriver"] == "awslogs", name
        assert options["awslogs-group"] == {"Ref": "LogGroup"}, name


def test_autoscaling_tracks_cpu_of_this_service() -> None:
    found = resources()
    target = found["ScalableTarget"]["Properties"]
    assert target["ResourceId"] == {"Fn::Sub": "service/${Cluster}/${Service.Name}"}
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    policy = found["CpuScalingPolicy"]["Properties"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["ScalingTargetId"] == {"Ref": "ScalableTarget"}
    metric = policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
    assert metric["PredefinedMetricType"] == "ECSServiceAverageCPUUtilization"


def test_image_and_model_location_are_parameters() -> None:
    template = load_template(TEMPLATE)
    assert {"ImageUri", "ImageTag", "ModelBucket", "ModelPrefix"} <= set(template["Parameters"])
    image = containers()["serve"]["Image"]["Fn::If"]
    assert image == [
        "HasImageUri",
        {"Ref": "ImageUri"},
        {"Fn::Sub": "${Repository.RepositoryUri}:${ImageTag}"},
    ]
    download = containers()["model-download"]
    assert download["Essential"] is False
    assert download["Command"][-2:] == [
        {"Fn::Sub": "s3://${ModelBucket}/${ModelPrefix}"},
        "/model/",
    ]
    depends = containers()["serve"]["DependsOn"]["Fn::If"][1]
    assert depends == [{"ContainerName": "model-download", "Condition": "SUCCESS"}]
    # The task may read the model prefix and nothing else.
    (policy,) = resources()["TaskRole"]["Properties"]["Policies"]["Fn::If"][1]
    actions = {s["Sid"]: s["Action"] for s in policy["PolicyDocument"]["Statement"]}
    assert actions == {"ListModel": "s3:ListBucket", "ReadModel": "s3:GetObject"}


@pytest.mark.slow
def test_health_check_command_passes_only_when_serve_is_ready(tmp_path: Path) -> None:
    command = containers()["serve"]["HealthCheck"]["Command"]
    assert command[:2] == ["CMD", "python"]
    port = free_port()
    env = {**os.environ, "IMGCLF_PORT": str(port)}
    probe = [sys.executable, *command[2:]]
    before = subprocess.run(probe, env=env, capture_output=True, timeout=30, check=False)
    assert before.returncode != 0  # nothing listens yet: unhealthy
    server = subprocess.Popen(
        [sys.executable, "-m", "imgclf", "serve", "--host", "127.0.0.1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/ready", 120)
        after = subprocess.run(probe, env=env, capture_output=True, timeout=30, check=False)
        assert after.returncode == 0, after.stderr
    finally:
        server.terminate()
        server.wait(30)
