"""Static checks of the Dockerfiles: the structure every image must keep, even unbuilt ones.

The training image is not built in tests (torch makes it large); these checks are what guards it.
The serving images are also built and run for real in ``test_deploy_compose.py``.
"""

from __future__ import annotations

import fnmatch
import shlex
import tomllib
from pathlib import Path

import pytest
from deploy_helpers import DOCKER_DIR, REPO_ROOT, Dockerfile, exec_form, parse_dockerfile

from imgclf.cli import build_parser

SERVING = ("serve.Dockerfile", "model-server.Dockerfile")
LAMBDA_DOCKERFILE = REPO_ROOT / "deploy" / "lambda" / "Dockerfile"
ALL = (*SERVING, "train.Dockerfile")


def requirements_for(extras: str) -> list[str]:
    """The dependency list the images install: base dependencies plus the named extras."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = project["optional-dependencies"]
    return list(project["dependencies"]) + [r for e in extras.split(",") for r in optional[e]]


def arg_default(stage_or_file: list[tuple[str, str]] | list[str], name: str) -> str | None:
    """Default value of ``ARG name=value`` among instructions or global args."""
    for item in stage_or_file:
        text = item[1] if isinstance(item, tuple) and item[0] == "ARG" else item
        if isinstance(text, str) and text.startswith(f"{name}="):
            return text.split("=", 1)[1]
    return None


@pytest.fixture(params=ALL)
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    """Each Dockerfile, parsed."""
    name: str = request.param
    return name, parse_dockerfile(DOCKER_DIR / name)


def test_base_image_is_an_argument_defaulting_to_the_official_image(
    dockerfile: tuple[str, Dockerfile],
) -> None:
    name, parsed = dockerfile
    assert parsed.global_args == ["BASE_IMAGE=python:3.11-slim"], name
    names: list[str] = []
    for stage in parsed.stages:
        assert stage.base == "${BASE_IMAGE}" or stage.base in names, (
            f"{name}: stage {stage.name} starts FROM {stage.base}, neither BASE_IMAGE nor a stage"
        )
        assert stage.name, f"{name}: every stage is named"
        names.append(stage.name)
    assert len(parsed.stages) >= 3, f"{name}: multi-stage build expected"


def test_final_stage_runs_as_non_root_with_an_imgclf_entrypoint(
    dockerfile: tuple[str, Dockerfile],
) -> None:
    name, parsed = dockerfile
    final = parsed.stages[-1]
    users = [u for s in parsed.stages if s is final or s.name == final.base for u in s.args("USER")]
    assert users, f"{name}: no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER must be a numeric non-root uid"
    (entrypoint,) = final.args("ENTRYPOINT")
    assert exec_form(entrypoint)[0] == "imgclf"


def test_dependencies_are_installed_before_the_source_is_copied(
    dockerfile: tuple[str, Dockerfile],
) -> None:
    name, parsed = dockerfile
    by_name = {s.name: s for s in parsed.stages}
    deps = by_name["deps"]
    assert any("--require-hashes" in run for run in deps.args("RUN")), name
    copied = " ".join(deps.args("COPY")).split()
    assert "src" not in copied and "pyproject.toml" not in copied, f"{name}: deps copies source"
    final = parsed.stages[-1]
    for copy in final.args("COPY"):
        assert copy.startswith("--from="), f"{name}: the final stage copies only from stages"


@pytest.mark.parametrize(
    "path", [DOCKER_DIR / name for name in ALL] + [LAMBDA_DOCKERFILE], ids=lambda p: p.parent.name
)
def test_copied_sources_exist_and_pass_the_ignore_file(path: Path) -> None:
    """Every image builds from the repository root: what it COPYs must reach the context."""
    name, parsed = path.name, parse_dockerfile(path)
    rules = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in parsed.stages:
        for copy in stage.args("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _dest = [word for word in shlex.split(copy) if not word.startswith("--")]
            for source in sources:
                if source.endswith("*"):  # optional file (README.md*)
                    continue
                assert (REPO_ROOT / source).exists(), f"{name}: COPY {source}: no such path"
                assert _included(source, rules), f"{name}: {source} is excluded by .dockerignore"


def _included(path: str, rules: list[str]) -> bool:
    """Docker's ignore semantics for a top-level path: the last matching rule wins."""
    included = True
    for rule in rules:
        negated = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if pattern == "**" or fnmatch.fnmatch(path, pattern):
            included = negated
    return included


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_have_a_healthcheck_and_no_torch(name: str) -> None:
    parsed = parse_dockerfile(DOCKER_DIR / name)
    final = parsed.stages[-1]
    (healthcheck,) = final.args("HEALTHCHECK")
    assert "CMD [" in healthcheck and "127.0.0.1" in healthcheck
    # What they install is deploy/locks/serve.txt: tests/deploy/test_deploy_locks.py checks it
    # pins imgclf[serve,grpc,s3] and no torch.
    (deps,) = (stage for stage in parsed.stages if stage.name == "deps")
    assert "-r /build/serve.txt" in " ".join(deps.args("RUN"))


def test_training_image_installs_torch_from_the_cpu_index() -> None:
    parsed = parse_dockerfile(DOCKER_DIR / "train.Dockerfile")
    deps = next(s for s in parsed.stages if s.name == "deps")
    index = arg_default(deps.instructions, "TORCH_INDEX_URL")
    assert index == "https://download.pytorch.org/whl/cpu"
    torch_run = next(run for run in deps.args("RUN") if "torch" in run)
    assert '--index-url "${TORCH_INDEX_URL}" -r /build/train-torch.txt' in torch_run
    assert any(r.startswith("torch") for r in requirements_for("train"))


def test_model_server_command_is_accepted_by_the_cli() -> None:
    parsed = parse_dockerfile(DOCKER_DIR / "model-server.Dockerfile")
    final = parsed.stages[-1]
    command = exec_form(final.args("ENTRYPOINT")[0])[1:] + exec_form(final.args("CMD")[0])
    args = build_parser().parse_args(command)
    assert args.command == "model-server"
    assert str(args.repository) == "/models"
    assert args.host == "0.0.0.0"
    assert (args.http_port, args.grpc_port) == (8000, 8001)


def test_parser_rejects_a_shell_form_entrypoint(tmp_path: Path) -> None:
    broken = tmp_path / "broken.Dockerfile"
    broken.write_text(
        "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE} AS a\nENTRYPOINT imgclf\n"
    )
    (entrypoint,) = parse_dockerfile(broken).stages[-1].args("ENTRYPOINT")
    with pytest.raises(ValueError):
        exec_form(entrypoint)
