"""Turn request bodies into model-ready pixels: read, fetch or base64-decode, then decode images.

Image decoding (Pillow) runs on a bounded thread pool so the event loop keeps answering other
requests, health checks and metrics while large photos are decoded. Images that cost more than
the settings' :class:`~imgclf.image_budget.DecodeLane` takes (much decode memory, or a JPEG with
many scans) go to one thread of their own that runs at a lower CPU priority, with a bounded
queue: an ordinary photo never waits behind them, for a decode thread or for a CPU. Every
failure is an :class:`~imgclf.errors.InputError` naming what was wrong with which input.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from imgclf.errors import ForbiddenURLError, InputError, OverloadedError, UnsupportedMediaError
from imgclf.image_budget import DecodeLaneError
from imgclf.inference.fetch import fetch_url_async
from imgclf.preprocessing import load_pixels
from imgclf.serving.backend import InferenceBackend
from imgclf.serving.http.dependencies import Services
from imgclf.serving.http.jsonbody import max_json_values
from imgclf.serving.http.schemas import BatchRequest, ImageInput
from imgclf.serving.json_input import (
    JSONBodyError,
    decode_base64,
    describe_errors,
    parse_json,
)

_JSON_TYPES = ("application/json",)
_MULTIPART = "multipart/form-data"
_RAW_TYPES = ("application/octet-stream", "image/")
_HOW_TO = (
    "send multipart/form-data with a 'file' field, JSON {'url': ...} or {'image': <base64>}, "
    "or the raw image bytes as application/octet-stream"
)


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def resolve_input(item: ImageInput, services: Services) -> bytes:
    """The encoded bytes of one JSON image input (fetching URLs safely)."""
    if item.image is not None:
        return decode_base64(item.image)
    assert item.url is not None  # the model guarantees exactly one of the two
    if not services.settings.url_inputs:
        raise ForbiddenURLError("URL inputs are disabled on this server; send the image bytes")
    return await fetch_url_async(item.url, services.fetch_policy)


async def _json_body(request: Request, services: Services) -> object:
    try:
        return parse_json(await request.body(), max_values=max_json_values(services))
    except JSONBodyError as exc:
        raise InputError(str(exc)) from exc


_Body = TypeVar("_Body", ImageInput, BatchRequest)


def _validated(model: type[_Body], data: object) -> _Body:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = describe_errors(exc.errors(include_input=False, include_url=False))
        raise InputError(f"invalid request body: {problems}") from exc


async def _form_files(request: Request, field: str, max_files: int) -> list[bytes]:
    async with request.form(max_files=max_files, max_fields=max_files + 8) as form:
        uploads = form.getlist(field) or (form.getlist("file") if field != "file" else [])
        if not uploads:
            raise InputError(f"multipart body has no '{field}' field; {_HOW_TO}")
        contents = []
        for upload in uploads:
            if not isinstance(upload, UploadFile):
                raise InputError(f"multipart field '{field}' must be a file upload, not text")
            contents.append(await upload.read())
        return contents


async def read_single_image(request: Request, services: Services) -> bytes:
    """The encoded image of a ``POST /predict`` request, whatever form it was sent in.

    Raises:
        UnsupportedMediaError: The request's content type is not one we accept (415).
        InputError: The body is malformed (400).
    """
    kind = _content_type(request)
    if kind == _MULTIPART:
        files = await _form_files(request, "file", max_files=1)
        if len(files) != 1:
            raise InputError("send exactly one 'file'; use /predict/batch for several images")
        return files[0]
    if kind in _JSON_TYPES:
        item = _validated(ImageInput, await _json_body(request, services))
        return await resolve_input(item, services)
    if kind.startswith(_RAW_TYPES):
        return await request.body()
    raise UnsupportedMediaError(f"content type {kind or '(none)'!r} is not accepted; {_HOW_TO}")


async def read_batch_images(request: Request, services: Services) -> list[bytes]:
    """The encoded images of a ``POST /predict/batch`` request, in order.

    Raises:
        UnsupportedMediaError: Not multipart or JSON (415).
        InputError: Malformed, or more images than ``max_batch_images`` (400).
    """
    limit = services.settings.max_batch_images
    kind = _content_type(request)
    if kind == _MULTIPART:
        images = await _form_files(request, "files", max_files=limit)
    elif kind in _JSON_TYPES:
        data = await _json_body(request, services)
        sent = data.get("images") if isinstance(data, dict) else None
        if isinstance(sent, list) and len(sent) > limit:  # before validating each item
            raise InputError(f"{len(sent)} images sent; at most {limit} per request")
        batch = _validated(BatchRequest, data)
        images = list(await asyncio.gather(*(resolve_input(i, services) for i in batch.images)))
    else:
        raise UnsupportedMediaError(
            f"content type {kind or '(none)'!r} is not accepted; send multipart/form-data with "
            "'files' fields or JSON {'images': [{'url' or 'image'}, ...]}"
        )
    if len(images) > limit:
        raise InputError(f"{len(images)} images sent; at most {limit} per request")
    return images


async def decode_images(
    images: Sequence[bytes], backend: InferenceBackend, services: Services
) -> np.ndarray:
    """Decode, resize and crop images in parallel on the decode pool -> uint8 ``(N, H, W, 3)``.

    Raises:
        InputError: The first bad image's error; with several images it names the position.
    """
    load = functools.partial(
        load_pixels,
        config=backend.preprocess_config,
        budget=services.image_budget,
        memory=services.decode_memory,
        # From now, not from when a decode thread is free: waiting in line counts too.
        deadline=services.image_budget.deadline(),
    )
    tasks = [_decode_in_lane(data, load, services) for data in images]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for index, result in enumerate(results):
        if isinstance(result, InputError):
            if len(images) > 1:
                raise type(result)(f"image {index}: {result}") from result
            raise result
        if isinstance(result, BaseException):
            raise result
    return np.stack([r for r in results if isinstance(r, np.ndarray)])


async def _decode_in_lane(
    data: bytes, load: Callable[..., np.ndarray], services: Services
) -> np.ndarray:
    """Decode on the shared pool, or on the low-priority costly-decode thread when costly.

    At most ``settings.costly_decode_queue`` costly decodes wait or run at once; the image that
    would be one more is refused at once (503 + ``Retry-After``) instead of waiting past its
    decode deadline, so one client's costly images cannot pile up in front of another's.

    Raises:
        OverloadedError: The costly lane is full (503).
    """
    assert services.decode_pool is not None and services.costly_decode_pool is not None
    loop = asyncio.get_running_loop()
    ordinary = functools.partial(load, data, lane=services.decode_lane)
    try:
        return await loop.run_in_executor(services.decode_pool, ordinary)
    except DecodeLaneError as costly:
        limit = services.settings.costly_decode_queue
        if services.costly_decodes >= limit:
            raise OverloadedError(
                f"this image is costly to decode ({costly}) and {limit} such images are being "
                "decoded or waiting already, the most this service takes; retry after 1 s "
                f"(a batch may hold at most {limit} of them)",
                1.0,
            ) from None
    services.costly_decodes += 1
    try:
        return await loop.run_in_executor(services.costly_decode_pool, load, data)
    finally:
        services.costly_decodes -= 1


async def classify_images(
    images: Sequence[bytes], services: Services
) -> tuple[np.ndarray, InferenceBackend]:
    """Decode images and run them through the micro-batcher -> probabilities ``(N, C)``.

    Raises:
        InputError: A bad image (4xx).
        OverloadedError: The queue is full (503).
        ModelNotReadyError: The model is not loaded (503).
    """
    backend, batcher, _ = services.ready_backend()
    pixels = await decode_images(images, backend, services)
    return await batcher.submit(pixels), backend


async def classify_pixels(
    pixels: np.ndarray, services: Services
) -> tuple[np.ndarray, InferenceBackend]:
    """Run already preprocessed uint8 ``(N, H, W, 3)`` pixels through the micro-batcher.

    Raises:
        InputError: The pixels do not have the model's input shape.
    """
    backend, batcher, _ = services.ready_backend()
    size = backend.preprocess_config.input_size
    if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3) or pixels.shape[0] < 1:
        raise InputError(
            f"pixels must have shape [N, {size}, {size}, 3] with N >= 1, got {list(pixels.shape)}"
        )
    return await batcher.submit(np.ascontiguousarray(pixels, dtype=np.uint8)), backend
