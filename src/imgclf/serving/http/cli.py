"""``imgclf serve``: run the REST service (API, V2 and TF Serving paths, web page) with uvicorn.

Cheap to import: FastAPI and uvicorn load only when the command runs. Options given on the command
line override ``IMGCLF_*`` environment variables, which override the defaults.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
from pathlib import Path
from typing import Any

from imgclf.errors import ConfigError

# argparse destination -> ServeSettings field, for options that map one to one.
_FIELDS = (
    "model",
    "model_server_url",
    "model_name",
    "model_cache_dir",
    "artifact",
    "threads",
    "host",
    "port",
    "max_batch_size",
    "max_wait_ms",
    "queue_size",
    "decode_threads",
    "instances",
    "max_upload_bytes",
    "body_timeout_s",
    "max_pixels",
    "rate_limit_per_s",
    "max_requests_per_client",
    "costly_decode_queue",
    "graceful_shutdown_s",
    "log_level",
)


def register(subparsers: Any) -> None:
    """Add the ``serve`` command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over REST with a web page (the bundled clothing model by default)",
        description="Serve a bundle (or front a model server) over REST: /predict, /docs, "
        "/metrics, KServe V2 and TF Serving paths, and a web page at /. Every option can also "
        "be set as an IMGCLF_<OPTION> environment variable.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        "-m",
        help="bundle directory, .tar.gz, s3://bucket/prefix/ or https://host/bundle.tar.gz"
        "[#sha256=HEX], downloaded once to --model-cache (default: the bundled model)",
    )
    parser.add_argument(
        "--model-cache", dest="model_cache_dir", type=Path, help="cache for remote bundles"
    )
    source.add_argument(
        "--model-server",
        dest="model_server_url",
        metavar="grpc://HOST:PORT",
        help="gateway mode: forward to an Open Inference Protocol model server",
    )
    parser.add_argument(
        "--model-name",
        help="serve the model under this name (e.g. image_classifier for a TF Serving client's "
        "/v1/models/image_classifier:predict); in gateway mode, its name on the model server",
    )
    parser.add_argument("--artifact", help="artifact to run: auto, onnx-int8, onnx, tflite")
    parser.add_argument(
        "--threads", type=int, help="runtime threads per instance (default: CPUs / instances)"
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--max-batch-size", type=int, help="images per model call (1: off)")
    parser.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill")
    parser.add_argument("--queue-size", type=int, help="images waiting before 503")
    parser.add_argument("--decode-threads", type=int, help="threads decoding images")
    parser.add_argument(
        "--instances",
        type=int,
        help="batches run at once, each on its own share of the CPUs (default: one per CPU this "
        "process may use, at most 8; 1 in gateway mode)",
    )
    parser.add_argument("--max-upload-bytes", type=int, help="request body cap (413 above)")
    parser.add_argument(
        "--body-timeout-s",
        type=float,
        help="time to receive a request body (default 15; stalled uploads get 408)",
    )
    parser.add_argument("--max-pixels", type=int, help="declared image pixel cap (413 above)")
    parser.add_argument(
        "--rate-limit", dest="rate_limit_per_s", type=float, help="requests/s per client"
    )
    parser.add_argument(
        "--max-requests-per-client",
        type=int,
        metavar="N",
        help="inference requests in progress per client address (default 32; 429 above)",
    )
    parser.add_argument(
        "--costly-decode-queue",
        type=int,
        metavar="N",
        help="costly images (large or many-scan) decoding or waiting to, on the low-priority "
        "thread (default 4; 503 above)",
    )
    key = parser.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key",
        help="require this key in the X-API-Key header on inference routes (visible to other "
        "local users in the process list: prefer --api-key-file or IMGCLF_API_KEY)",
    )
    key.add_argument(
        "--api-key-file",
        type=Path,
        metavar="PATH",
        help="read the required API key from this file (e.g. a mounted secret)",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        dest="trusted_proxies",
        metavar="IP_OR_CIDR",
        help="reverse proxy whose X-Forwarded-For is believed (repeat; default: none, the "
        "connecting address is the client)",
    )
    parser.add_argument(
        "--cors-origin", action="append", dest="cors_origins", help="allowed origin (repeat)"
    )
    parser.add_argument(
        "--graceful-shutdown-s", type=float, help="time to finish requests on SIGTERM"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--plain-logs", action="store_true", help="text logs instead of JSON")
    parser.set_defaults(handler=run_serve)


def build_settings(args: argparse.Namespace) -> Any:
    """``ServeSettings`` from the environment, overridden by the options given.

    Raises:
        ConfigError: A setting is invalid (the message names it).
    """
    from pydantic import ValidationError

    from imgclf.serving.http.settings import ServeSettings

    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in _FIELDS if getattr(args, name, None) is not None
    }
    if args.cors_origins:
        overrides["cors_origins"] = args.cors_origins
    if args.trusted_proxies:
        overrides["trusted_proxies"] = args.trusted_proxies
    if args.plain_logs:
        overrides["log_json"] = False
    api_key = _api_key(args)
    if api_key is not None:
        overrides["api_key"] = api_key
    try:
        return ServeSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid serve settings: {problems}") from exc


def _api_key(args: argparse.Namespace) -> str | None:
    """The key given with ``--api-key`` or read from ``--api-key-file`` (None: neither)."""
    path: Path | None = getattr(args, "api_key_file", None)
    if path is None:
        given: str | None = getattr(args, "api_key", None)
        if given is not None and not given.strip():
            raise ConfigError("--api-key is empty; give the key clients must send")
        return given
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the API key file {path}: {exc}") from exc
    if not key:
        raise ConfigError(f"the API key file {path} is empty")
    return key


def run_serve(args: argparse.Namespace) -> int:
    """Start uvicorn with the app; returns when the server has shut down."""
    try:
        import uvicorn  # noqa: F401 - checked here for a clear message
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "imgclf serve needs the serve extra: pip install 'imgclf[serve]'"
        ) from exc
    from imgclf.serving.http.app import run_server

    settings = build_settings(args)
    check_port_free(settings.host, settings.port)
    backend = None
    if settings.model_server_url is None:
        from imgclf.inference.bundle_source import fetch_bundle
        from imgclf.serving.http.backends import fetch_options, load_backend

        # Downloaded and opened now: a failed download, a bundle without a runnable artifact or a
        # corrupt one is then a one-line error and exit 2 instead of a traceback in uvicorn's
        # startup log and exit 3. The app serves the verified local copy.
        local = fetch_bundle(settings.model, options=fetch_options(settings))
        settings = settings.model_copy(update={"model": None if local is None else str(local)})
        backend = load_backend(settings)
    elif (
        importlib.util.find_spec("tritonclient") is None or importlib.util.find_spec("grpc") is None
    ):
        # Checked now: inside uvicorn's startup the same error is a traceback in a JSON log.
        raise ConfigError(
            "imgclf serve --model-server needs the grpc extra: pip install 'imgclf[serve,grpc]'"
        )
    run_server(settings, backend=backend)
    return 0


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, before uvicorn starts.

    Uvicorn would report it as a JSON log line among its start-up lines and exit 3; this is the
    one-line error every other command gives. (Another process can still take the port in between;
    uvicorn's own error covers that race.)

    Raises:
        ConfigError: The address cannot be bound (in use, not local, not permitted).
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop what uses it or "
                "pick another --port"
            ) from exc
