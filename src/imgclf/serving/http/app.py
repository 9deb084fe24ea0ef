"""The FastAPI application: ``create_app(settings)`` wires settings, backend, batcher and routes.

Nothing happens at import time. The model is loaded (or the model server client opened) in the
app's lifespan, warmed with one inference, and put behind a :class:`MicroBatcher`; on shutdown the
batcher finishes every queued request before the process exits. Errors from
:mod:`imgclf.errors` become status codes here, and only here (:data:`REST_STATUS`, and
:data:`~imgclf.serving.http.tfserving.TFSERVING_STATUS` on TF Serving's paths): every error
answers with a JSON ``{"detail": "..."}`` body (plus ``"error"`` on the V2 and TF Serving paths,
as those protocols expect).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from imgclf import __version__
from imgclf.errors import (
    ImgclfError,
    ModelServerError,
    ModelServerTimeoutError,
    ModelServerUnavailableError,
    ServingError,
)
from imgclf.inference.cpus import low_priority_executor
from imgclf.serving.backend import InferenceBackend
from imgclf.serving.http import api, page, tfserving, v2
from imgclf.serving.http.admission import AdmissionMiddleware
from imgclf.serving.http.batching import MicroBatcher
from imgclf.serving.http.dependencies import Services
from imgclf.serving.http.observability import (
    CLIENT_CLOSED_REQUEST,
    RequestContextMiddleware,
    configure_logging,
    error_payload,
)
from imgclf.serving.http.security import retry_after_header
from imgclf.serving.http.settings import ServeSettings
from imgclf.serving.json_input import describe_errors
from imgclf.serving.status import HTTP_STATUS, status_for

logger = logging.getLogger(__name__)


def create_app(
    settings: ServeSettings | None = None, *, backend: InferenceBackend | None = None
) -> FastAPI:
    """Build the REST service.

    Args:
        settings: Service settings; None reads them from ``IMGCLF_*`` environment variables.
        backend: Use this backend instead of loading the one the settings describe (tests,
            embedding the app in another program).

    Returns:
        The ASGI application; serve it with uvicorn (``imgclf serve`` does).
    """
    settings = settings or ServeSettings()
    services = Services.from_settings(settings)
    metrics = services.metrics
    app = FastAPI(
        title="imgclf",
        version=__version__,
        description="Image classification: REST API, KServe V2 and TF Serving paths, web page.",
        lifespan=_lifespan(services, backend),
    )
    app.state.services = services
    for router in (api.router, v2.router, tfserving.router, page.router):
        app.include_router(router)
    page.mount_static(app)
    _add_error_handlers(app)
    # The middleware added last runs first: request ids and logs, then CORS (so refusals carry
    # its headers too), then admission, which refuses excess requests before their bodies are read.
    app.add_middleware(AdmissionMiddleware, services=services)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", settings.api_key_header, "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_upload_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    if settings.trusted_proxies:  # outermost: logs, metrics and the rate limit see the client
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app


def run_server(settings: ServeSettings, *, backend: InferenceBackend | None = None) -> None:
    """Serve the app with uvicorn until SIGINT/SIGTERM, then finish in-flight requests.

    On SIGTERM uvicorn stops accepting connections and waits up to
    ``settings.graceful_shutdown_s`` for requests in flight; the lifespan then drains the batcher.
    """
    import uvicorn

    from imgclf.serving.header_limits import uvicorn_options
    from imgclf.serving.memory import tune_malloc

    configure_logging(settings.log_level, json_lines=settings.log_json)
    if settings.tune_malloc:
        tune_malloc()
    uvicorn.run(
        create_app(settings, backend=backend),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.graceful_shutdown_s),
        server_header=False,
        timeout_keep_alive=5,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 (or $FORWARDED_ALLOW_IPS) by default,
        # so any local client could pick its address; create_app trusts settings.trusted_proxies.
        proxy_headers=False,
        **uvicorn_options(settings.max_header_bytes, settings.max_headers),
    )


def _lifespan(services: Services, given: InferenceBackend | None):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _start(services, given)
        try:
            yield
        finally:
            await _stop(services)

    return lifespan


async def _start(services: Services, given: InferenceBackend | None) -> None:
    from imgclf.serving.http.backends import load_backend, serving_plan

    settings = services.settings
    plan = serving_plan(settings)
    backend = (
        given
        if given is not None
        else await asyncio.to_thread(load_backend, settings, plan.threads)
    )
    services.metrics.model_info.info(
        {
            "name": backend.model_name,
            "version": backend.model_version,
            "labels": str(len(backend.labels)),
        }
    )
    services.decode_pool = ThreadPoolExecutor(settings.decode_threads, "imgclf-decode")
    services.costly_decode_pool = low_priority_executor(
        settings.costly_decode_nice, "imgclf-decode-costly"
    )
    batcher = MicroBatcher(
        backend.infer,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000.0,
        queue_size=settings.queue_size,
        instances=plan.instances,
        stats=services.metrics.batch_stats(),
    )
    batcher.start()
    services.backend, services.batcher = backend, batcher
    services.warmed = await _warm_up(backend)
    logger.info(
        "serving model %s version %s",
        backend.model_name,
        backend.model_version,
        extra={"labels": len(backend.labels), "max_batch_size": settings.max_batch_size},
    )


async def _warm_up(backend: InferenceBackend) -> bool:
    """Run one inference so the first request does not pay for lazy initialisation."""
    size = backend.preprocess_config.input_size
    try:
        await asyncio.to_thread(backend.infer, np.zeros((1, size, size, 3), dtype=np.uint8))
    except ServingError as exc:  # a remote model server may come up later: not fatal
        logger.warning("warm-up failed, readiness follows the backend: %s", exc)
    return True


async def _stop(services: Services) -> None:
    services.draining = True
    if services.batcher is not None:
        await services.batcher.stop()
    for pool in (services.decode_pool, services.costly_decode_pool):
        if pool is not None:
            pool.shutdown(wait=True)
    close = getattr(services.backend, "close", None)
    if callable(close):
        close()
    logger.info("stopped: every queued request was answered")


def _error_body(request: Request, detail: str) -> dict[str, str]:
    return error_payload(request.url.path, detail)


#: The REST service's status for each core error (its V2 routes included); TF Serving's paths
#: answer by :data:`~imgclf.serving.http.tfserving.TFSERVING_STATUS`.
REST_STATUS: Mapping[type[Exception], int] = HTTP_STATUS

#: What a client is told when the model server fails (gateway mode): the full message, which
#: may name internal hosts and addresses, goes to the log under the request's id instead.
_MODEL_SERVER_DETAILS: Mapping[type[Exception], str] = {
    ModelServerUnavailableError: "the model server is unavailable; retry after 1 s",
    ModelServerTimeoutError: "the model server did not answer in time; retry later",
    ModelServerError: "the model server failed to answer this request",
}


def _status(path: str, exc: ImgclfError) -> int:
    tf_serving = path.startswith(tfserving.router.prefix)
    return status_for(exc, tfserving.TFSERVING_STATUS if tf_serving else REST_STATUS, 500)


def _public_detail(request: Request, exc: ImgclfError) -> str:
    text = status_for(exc, _MODEL_SERVER_DETAILS, None)
    if text is None:
        return str(exc)
    request_id = request.scope.get("state", {}).get("request_id", "-")
    return f"{text} (request id {request_id})"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ImgclfError)
    async def imgclf_error(request: Request, exc: ImgclfError) -> JSONResponse:
        status = _status(request.url.path, exc)
        headers = {}
        if status == 503:  # every 503 says when to come back
            headers["Retry-After"] = retry_after_header(getattr(exc, "retry_after_s", 1.0))
        if status >= 500:
            logger.warning("%s: %s", type(exc).__name__, exc)
        detail = _public_detail(request, exc)
        return JSONResponse(_error_body(request, detail), status, headers=headers or None)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody is left to read an answer; 499 (as nginx logs it) keeps this out of the 5xx
        # counts and the error log: it is not the service's failure.
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            _error_body(request, str(exc.detail)), exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = describe_errors(exc.errors())
        return JSONResponse(_error_body(request, f"invalid request: {problems}"), 422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        request_id = request.scope.get("state", {}).get("request_id", "-")
        return JSONResponse(
            _error_body(request, f"internal error; quote request id {request_id} when reporting"),
            500,
        )
