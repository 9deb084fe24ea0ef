"""Settings: environment variables, CLI overrides, validation at start-up."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from imgclf.errors import ConfigError
from imgclf.serving.http.cli import build_settings, register
from imgclf.serving.http.settings import ServeSettings


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLF_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("IMGCLF_CORS_ORIGINS", '["https://shop.example"]')
    monkeypatch.setenv("IMGCLF_API_KEY", "s3cret-value")
    settings = ServeSettings()
    assert settings.max_batch_size == 4
    assert settings.cors_origins == ["https://shop.example"]
    assert settings.api_key is not None
    assert "s3cret-value" not in repr(settings)  # secrets are not printed


def test_cli_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLF_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("IMGCLF_PORT", "9000")
    settings = build_settings(_parse("--max-batch-size", "8", "--cors-origin", "https://a.example"))
    assert settings.max_batch_size == 8
    assert settings.port == 9000
    assert settings.cors_origins == ["https://a.example"]
    assert build_settings(_parse("--plain-logs")).log_json is False


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"model_server_url": "http://x:1"}, "grpc://"),
        ({"model_server_url": "grpc://x:1", "model": "/tmp/b"}, "not both"),
        ({"unknown_option": 1}, "unknown_option"),
        ({"trusted_proxies": ["proxy.internal"]}, "not an IP address or CIDR"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        ServeSettings(**kwargs)  # type: ignore[arg-type]


def test_trusted_proxies_from_cli_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLF_TRUSTED_PROXIES", "10.0.0.1, 192.168.0.0/16")
    assert ServeSettings().trusted_proxies == ["10.0.0.1", "192.168.0.0/16"]
    monkeypatch.setenv("IMGCLF_TRUSTED_PROXIES", '["10.1.2.3/8"]')
    assert ServeSettings().trusted_proxies == ["10.0.0.0/8"]  # uvicorn wants the network form
    monkeypatch.delenv("IMGCLF_TRUSTED_PROXIES")
    assert ServeSettings().trusted_proxies == []
    cli = build_settings(_parse("--trusted-proxy", "127.0.0.1", "--trusted-proxy", "::1"))
    assert cli.trusted_proxies == ["127.0.0.1", "::1"]


def test_api_key_from_the_command_line_or_a_file(tmp_path: Path) -> None:
    assert build_settings(_parse()).api_key is None
    given = build_settings(_parse("--api-key", "k-123")).api_key
    assert given is not None and given.get_secret_value() == "k-123"
    secret = tmp_path / "key"
    secret.write_text("k-from-file\n")  # as mounted secrets usually end
    read = build_settings(_parse("--api-key-file", str(secret))).api_key
    assert read is not None and read.get_secret_value() == "k-from-file"
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        build_settings(_parse("--api-key-file", str(tmp_path / "missing")))
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        build_settings(_parse("--api-key-file", str(secret)))
    with pytest.raises(SystemExit):
        _parse("--api-key", "a", "--api-key-file", str(secret))


def test_cli_turns_bad_settings_into_a_config_error() -> None:
    with pytest.raises(ConfigError, match="queue_size"):
        build_settings(_parse("--queue-size", "0"))


def test_model_and_model_server_are_exclusive_on_the_command_line() -> None:
    with pytest.raises(SystemExit):
        _parse("--model", "a", "--model-server", "grpc://b:1")


def test_fetch_policy_follows_settings() -> None:
    policy = ServeSettings(
        url_allowed_hosts=["Img.Example"], url_allow_loopback=True, max_upload_bytes=2048
    ).fetch_policy()
    assert policy.allowed_hosts == frozenset({"img.example"})
    assert policy.allow_loopback
    assert policy.max_bytes == 2048


@pytest.mark.parametrize(
    "options, cpus, expected",
    [
        ({}, 2, (2, 1)),  # one single-threaded instance per CPU the process may use
        ({}, 32, (8, 4)),  # at most 8 instances by default, sharing the CPUs
        ({"instances": 1}, 8, (1, 8)),  # one instance: every CPU
        ({"instances": 2}, 8, (2, 4)),  # instances share the CPUs
        ({"instances": 3}, 2, (3, 1)),  # never fewer than one thread
        ({"instances": 2, "threads": 3}, 8, (2, 3)),  # explicit threads win
        ({"model_server_url": "grpc://127.0.0.1:1"}, 8, (1, 1)),  # gateway: one batch in flight
    ],
)
def test_instances_and_threads_follow_the_cpus_unless_given(
    options: dict[str, Any], cpus: int, expected: tuple[int, int]
) -> None:
    from imgclf.inference.cpus import CpuBudget
    from imgclf.serving.http.backends import serving_plan

    plan = serving_plan(ServeSettings(**options), CpuBudget(cpus, "test"))
    assert (plan.instances, plan.threads) == expected


def test_the_planned_threads_reach_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgclf.serving.http import backends

    seen: dict[str, object] = {}

    def fake_from_bundle(path: str | None, **kwargs: object) -> str:
        seen.update(kwargs)
        return "backend"

    monkeypatch.setattr(backends.EmbeddedBackend, "from_bundle", fake_from_bundle)
    assert backends.load_backend(ServeSettings(), threads=3) == "backend"  # type: ignore[comparison-overlap]
    assert seen["threads"] == 3


def test_instances_come_from_the_cli_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_settings(_parse("--instances", "2")).instances == 2
    monkeypatch.setenv("IMGCLF_INSTANCES", "3")
    assert ServeSettings().instances == 3
    with pytest.raises(ConfigError, match="instances"):
        build_settings(_parse("--instances", "0"))
