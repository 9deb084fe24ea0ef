"""Fixtures of the deployment tests (helpers live in ``deploy_helpers``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import (
    DOCKER_DIR,
    REPO_ROOT,
    TEST_TAG,
    Images,
    base_image,
    build_image,
    require_podman,
)


@pytest.fixture(scope="session")
def images() -> Iterator[Images]:
    """Build the serving and model-server images once per session (cached layers make it quick).

    Skips when the build context has no bundled model: both images serve it by default.
    """
    podman = require_podman()
    context = Path(os.environ.get("IMGCLF_CONTAINER_CONTEXT", REPO_ROOT)).resolve()
    manifest = context / "src" / "imgclf" / "models" / "clothing-lite0" / "manifest.json"
    if not manifest.is_file():
        pytest.skip(f"no bundled model at {manifest.parent}: the images serve it by default")
    built = Images(
        serve=f"localhost/imgclf-serve:{TEST_TAG}",
        model_server=f"localhost/imgclf-model-server:{TEST_TAG}",
        base=base_image(),
        context=context,
    )
    build_image(podman, DOCKER_DIR / "serve.Dockerfile", built.serve, context, built.base)
    build_image(
        podman, DOCKER_DIR / "model-server.Dockerfile", built.model_server, context, built.base
    )
    yield built
