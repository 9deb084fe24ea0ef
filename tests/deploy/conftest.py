"""Fixtures of the deployment tests (helpers live in ``deploy_helpers``)."""

from __future__ import annotations

from collections.abc import Iterator

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

    Built from the repository root, as the docs say. Skips when there is no bundled model: both
    images serve it by default.
    """
    podman = require_podman()
    manifest = REPO_ROOT / "src" / "imgclf" / "models" / "clothing-lite0" / "manifest.json"
    if not manifest.is_file():
        pytest.skip(f"no bundled model at {manifest.parent}: the images serve it by default")
    built = Images(
        serve=f"localhost/imgclf-serve:{TEST_TAG}",
        model_server=f"localhost/imgclf-model-server:{TEST_TAG}",
        base=base_image(),
    )
    build_image(podman, DOCKER_DIR / "serve.Dockerfile", built.serve, built.base)
    build_image(podman, DOCKER_DIR / "model-server.Dockerfile", built.model_server, built.base)
    yield built
