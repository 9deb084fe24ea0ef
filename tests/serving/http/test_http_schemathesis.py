"""Property-based API testing: schemathesis explores the OpenAPI schema and finds no 500s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgclf.serving.http import ServeSettings, create_app

schemathesis = pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 30


def _served_names(pair: tuple[Any, bool]) -> Any:
    """Half the cases address the served model, so the model routes are explored past 404."""
    case, use_served = pair
    if use_served and case.path_parameters:
        case.path_parameters.update(
            {
                k: v
                for k, v in {"name": "colors", "version": "1"}.items()
                if k in case.path_parameters
            }
        )
    return case


def _check_operation(operation: Any) -> None:
    @given(case=st.tuples(operation.as_strategy(), st.booleans()).map(_served_names))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        response = case.call()
        assert response.status_code < 500 or response.status_code == 503, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
        )
        if response.status_code >= 400:
            assert isinstance(response.json().get("detail"), str), response.text[:300]

    check()


def test_no_server_errors_anywhere_in_the_schema(tiny_bundle: Path) -> None:
    app = create_app(ServeSettings(model=tiny_bundle, threads=1, url_inputs=False))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        _check_operation(operation)
