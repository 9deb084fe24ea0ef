"""``imgclf model-server``: serve a model repository over the Open Inference Protocol (V2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.inference.cli import positive_int


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``model-server`` command."""
    parser = subparsers.add_parser(
        "model-server",
        help="serve a Triton-style model repository over V2 gRPC and REST (and TF Serving's APIs)",
        description=(
            "Serve every model of a Triton-style repository over the Open Inference Protocol "
            "(KServe V2): gRPC (inference.GRPCInferenceService) and REST (/v2/...), and over "
            "TF Serving's REST (/v1/...) and, with --tfserving-grpc-port, gRPC APIs. New model "
            "versions dropped into the repository are picked up without a restart."
        ),
    )
    parser.add_argument("--repository", type=Path, required=True, help="model repository dir")
    parser.add_argument(
        "--bundle",
        help="export this bundle into the repository first (as version 1 if the model is new): "
        "a directory, .tar.gz, s3://bucket/prefix/ or https://host/bundle.tar.gz[#sha256=HEX]",
    )
    parser.add_argument("--model-cache", type=Path, help="cache for a remote --bundle")
    parser.add_argument("--model-name", help="model name for --bundle (default: bundle name)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--grpc-port", type=int, default=8001, help="V2 gRPC port")
    parser.add_argument("--http-port", type=int, default=8000, help="V2 REST port")
    parser.add_argument("--no-http", action="store_true", help="serve gRPC only")
    parser.add_argument(
        "--tfserving-grpc-port",
        type=int,
        help="also serve TF Serving's gRPC API (PredictionService, ModelService) on this port, "
        "e.g. 8500 as TF Serving does (default: off); the REST port always answers /v1",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, help="seconds between repository scans (0: off)"
    )
    parser.add_argument(
        "--max-message-mb", type=float, default=64.0, help="largest gRPC message / REST body"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="ONNX Runtime threads per model instance (default: the CPUs this process may use, "
        "shared equally among the instances)",
    )
    parser.add_argument(
        "--max-connection-age",
        type=float,
        default=60.0,
        help="seconds after which gRPC connections are closed gracefully, so balancing clients "
        "re-resolve the name and find new replicas (0: never)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Export the optional bundle, start the servers, and serve until SIGINT/SIGTERM."""
    import importlib
    import signal
    import threading

    from imgclf.errors import ConfigError

    try:
        from imgclf.serving.model_server.server import ModelServer, ModelServerSettings

        if not args.no_http:
            importlib.import_module("imgclf.serving.model_server.rest")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the model server needs the grpc and serve extras ({exc.name} is missing); "
            "install them with: pip install 'imgclf[grpc,serve]'"
        ) from exc

    if args.bundle is not None:
        args.repository.mkdir(parents=True, exist_ok=True)
        _export_if_new(args.bundle, args.repository, args.model_name, args.model_cache)
    settings = ModelServerSettings(
        repository=args.repository,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=None if args.no_http else args.http_port,
        tfserving_grpc_port=args.tfserving_grpc_port,
        poll_interval_s=args.poll_interval,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        threads=args.threads,
        max_connection_age_s=args.max_connection_age,
    )
    server = ModelServer(settings)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    rest = f", REST on {settings.host}:{server.http_port}" if server.http_port else ""
    if server.tfserving_grpc_port:
        rest += f", TF Serving gRPC on {settings.host}:{server.tfserving_grpc_port}"
    print(
        f"model server: gRPC on {settings.host}:{server.grpc_port}{rest}; "
        f"models: {', '.join(server.repository.model_names()) or 'none loaded'}",
        flush=True,
    )
    stop.wait()
    server.stop()
    return 0


def _export_if_new(
    bundle: str, repository: Path, model_name: str | None, cache_dir: Path | None
) -> None:
    from imgclf.bundle import load_bundle
    from imgclf.export.triton import export_triton_repository
    from imgclf.inference.bundle_source import FetchOptions, fetch_bundle, is_remote
    from imgclf.model_repository import CONFIG_NAME

    options = FetchOptions() if cache_dir is None else FetchOptions(cache_dir=cache_dir)
    local = fetch_bundle(bundle, options=options)
    # A remote bundle holds only the artifact that runs, already checked against the manifest.
    loaded = load_bundle(local, verify=not is_remote(bundle))
    name = model_name or loaded.manifest.name
    if (repository / name / CONFIG_NAME).is_file():
        return
    export_triton_repository(loaded, repository, model_name=name, version=1, artifact="auto")
