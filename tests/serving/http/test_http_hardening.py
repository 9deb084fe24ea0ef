"""Bad, hostile and unusual inputs: each gets the right 4xx with a reason, never a 500."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from http_fakes import ClientFactory, FakeBackend
from PIL import Image

from imgclf.serving.http import ServeSettings, create_app

ImageBytes = Callable[..., bytes]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _post_file(
    client: TestClient, data: bytes, name: str = "photo.jpg", kind: str = "image/jpeg"
) -> Any:
    return client.post("/predict", files={"file": (name, data, kind)})


# -- size caps -------------------------------------------------------------------------------


def test_upload_over_the_cap_is_413(make_client: ClientFactory, image_bytes: ImageBytes) -> None:
    client = make_client(max_upload_bytes=4096)
    response = _post_file(client, b"\xff\xd8" + b"x" * 10_000)
    assert response.status_code == 413
    assert "4,096 bytes" in response.json()["detail"]
    assert _post_file(client, image_bytes("red", size=(16, 16))).status_code == 200


def test_streamed_body_without_length_is_capped_too(make_client: ClientFactory) -> None:
    client = make_client(max_upload_bytes=4096)

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    response = client.post(
        "/predict", content=chunks(), headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_decompression_bomb_png_is_refused_before_decoding(client: TestClient) -> None:
    bomb = png_declaring(100_000, 100_000)
    assert len(bomb) < 200
    response = _post_file(client, bomb, "bomb.png", "image/png")
    assert response.status_code == 413
    assert "pixels" in response.json()["detail"]


def test_default_pixel_cap_is_far_below_pillows(client: TestClient) -> None:
    """A 6000x6000 PNG compresses to ~35 KB but costs ~127 MB to decode: refused by default."""
    buffer = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 100_000
    response = _post_file(client, buffer.getvalue(), "big.png", "image/png")
    assert response.status_code == 413
    assert "36,000,000 pixels" in response.json()["detail"]


def test_pixel_cap_is_a_setting(make_client: ClientFactory, image_bytes: ImageBytes) -> None:
    client = make_client(max_pixels=100 * 100)
    assert _post_file(client, image_bytes("red", size=(100, 100))).status_code == 200
    assert _post_file(client, image_bytes("red", size=(101, 100))).status_code == 413


def test_costly_images_past_the_costly_lane_bound_get_503_with_retry_after(
    make_client: ClientFactory, image_bytes: ImageBytes
) -> None:
    """Three costly images in one batch, a lane that takes two: 503, and the lane frees up."""
    from imgtools import raw_png

    client = make_client(costly_decode_queue=2)
    costly = raw_png((3000, 3000), 16, 0)  # 77 MiB to decode: over large_decode_bytes
    files = [("files", (f"{i}.png", costly, "image/png")) for i in range(3)]
    answer = client.post("/predict/batch", files=files)
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "1"
    assert "costly to decode (needs about 77 MiB to decode)" in answer.json()["detail"]
    assert client.post("/predict/batch", files=files[:2]).status_code == 200
    assert _post_file(client, image_bytes("red")).status_code == 200


# -- content checks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, name",
    [
        (b"%PDF-1.7\n1 0 obj << >> endobj", "photo.jpg"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><rect/></svg>", "photo.png"),
        (b"hello, I am plain text pretending to be an image", "photo.jpeg"),
        (b"\x00" * 64, "photo.webp"),
    ],
)
def test_type_is_checked_by_content_not_extension(
    client: TestClient, data: bytes, name: str
) -> None:
    response = _post_file(client, data, name, "image/jpeg")
    assert response.status_code == 415
    assert "not a recognised image format" in response.json()["detail"]


def test_real_image_with_misleading_name_and_type_is_accepted(
    client: TestClient, image_bytes: ImageBytes
) -> None:
    response = _post_file(client, image_bytes("blue", fmt="PNG"), "notes.txt", "text/plain")
    assert response.status_code == 200
    assert response.json()["class"] == "blue"


def test_accepted_decoder_but_refused_format_is_415(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PPM")
    response = _post_file(client, buffer.getvalue(), "x.ppm", "image/x-portable-pixmap")
    assert response.status_code == 415
    assert "PPM is not accepted" in response.json()["detail"]


def test_truncated_image_is_400_with_a_reason(client: TestClient, image_bytes: ImageBytes) -> None:
    data = image_bytes("red", fmt="PNG", size=(64, 64))
    response = _post_file(client, data[: len(data) // 2], "cut.png", "image/png")
    assert response.status_code == 400
    assert "truncated" in response.json()["detail"]


def test_corrupt_jpeg_is_400(client: TestClient, image_bytes: ImageBytes) -> None:
    data = bytearray(image_bytes("red", size=(64, 64)))
    data[200:] = bytes(len(data) - 200)  # valid header, garbage entropy-coded data
    response = _post_file(client, bytes(data[:400]))
    assert response.status_code == 400
    assert "corrupt" in response.json()["detail"]


@pytest.mark.parametrize("form", ["multipart", "raw", "base64"])
def test_zero_byte_images_are_400(client: TestClient, form: str) -> None:
    if form == "multipart":
        response = _post_file(client, b"")
    elif form == "raw":
        response = client.post(
            "/predict", content=b"", headers={"Content-Type": "application/octet-stream"}
        )
    else:
        response = client.post("/predict", json={"image": ""})
    assert response.status_code == 400
    assert "zero bytes" in response.json()["detail"]


def test_exif_orientation_is_applied(make_client: ClientFactory) -> None:
    """Stored landscape red|blue, EXIF says rotate 90 degrees: the model sees red over blue."""
    backend = FakeBackend()
    client = make_client(backend=backend)
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    assert _post_file(client, buffer.getvalue()).status_code == 200
    pixels = backend.last_pixels
    assert pixels is not None
    assert pixels.shape == (1, 32, 32, 3)
    top, bottom = pixels[0, 2, 16], pixels[0, -3, 16]
    assert top[0] > 200 > top[2]  # red on top
    assert bottom[2] > 200 > bottom[0]  # blue at the bottom


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (5000, 4000)])
def test_tiny_huge_and_extreme_aspect_images(client: TestClient, size: tuple[int, int]) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 40, 220)).save(buffer, "JPEG", quality=80)
    response = _post_file(client, buffer.getvalue())
    assert response.status_code == 200, response.text
    assert response.json()["class"] == "blue"


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_every_pixel_mode_is_accepted(client: TestClient, mode: str) -> None:
    buffer = io.BytesIO()
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
    Image.new(mode, (20, 20)).save(buffer, fmt)
    assert _post_file(client, buffer.getvalue(), "x", "image/png").status_code == 200


# -- hostile JSON ----------------------------------------------------------------------------

_DEEP = "[" * 2000 + "]" * 2000
_HUGE_INT = "1" * 5000  # over the interpreter's 4300-digit conversion limit
_V2 = "/v2/models/colors/infer"
_TF = "/v1/models/colors:predict"


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        # nesting deeper than the decoder's recursion limit: refused by the value budget of
        # the REST paths, by the decoder on the V2 and TF Serving paths (which take pixels)
        ("/predict", _DEEP, "JSON values"),
        ("/predict", '{"image": ' + _DEEP + "}", "JSON values"),
        ("/predict/batch", '{"images": ' + _DEEP + "}", "JSON values"),
        (_V2, '{"inputs": ' + _DEEP + "}", "too deeply"),
        (_V2, '{"parameters": {"x": ' + _DEEP + "}}", "too deeply"),
        (_TF, '{"instances": ' + _DEEP + "}", "too deeply"),
        ("/predict", '{"image": ' + _HUGE_INT + "}", "too many digits"),
        ("/predict/batch", '{"images": [' + _HUGE_INT + "]}", "too many digits"),
        (_V2, '{"inputs": [{"name": "p", "shape": [' + _HUGE_INT + "]}]}", "too many digits"),
        (_TF, '{"instances": [' + _HUGE_INT + "]}", "too many digits"),
        ("/predict", '{"image": ', "not valid JSON"),
        (_V2, '{"inputs": ', "not valid JSON"),
    ],
)
def test_hostile_json_is_400_with_a_reason(
    client: TestClient, path: str, body: str, reason: str
) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert reason in response.json()["detail"]


def test_huge_batch_of_junk_is_refused_cheaply_with_a_short_answer(client: TestClient) -> None:
    # 2 MB of [1,1,...]: pydantic used to report a million item errors (an 80 MB answer)
    body = '{"images": [' + ",".join(["1"] * 1_000_000) + "]}"
    response = client.post(
        "/predict/batch", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert len(response.content) < 200
    below_the_value_budget = '{"images": [' + ",".join(["1"] * 100) + "]}"
    response = client.post(
        "/predict/batch",
        content=below_the_value_budget,
        headers={"Content-Type": "application/json"},
    )
    assert response.json()["detail"] == "100 images sent; at most 32 per request"


@pytest.mark.parametrize(
    ("path", "values"),
    [("/predict", 1000), ("/predict/batch", 1000), (_TF, 1_000_001), (_V2, 1_000_001)],
)
def test_bodies_with_more_json_values_than_needed_are_refused_before_decoding(
    client: TestClient, path: str, values: int
) -> None:
    # 10 MB of tiny values costs the decoder up to 2 s of the event loop; refuse it unread
    body = '{"images": [' + ",".join(["[]"] * values) + "]}"
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "JSON values" in response.json()["detail"]


def test_v2_json_value_budget_is_a_setting(make_client: ClientFactory) -> None:
    client = make_client(max_json_values=5000)
    tensor = {"name": "p", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}
    assert client.post(_V2, json={"inputs": [tensor]}).status_code == 200
    tensor = {**tensor, "shape": [2, 32, 32, 3], "data": [0] * 6144}
    refused = client.post(_V2, json={"inputs": [tensor]})
    assert refused.status_code == 400
    assert "more than 5,000 JSON values" in refused.json()["detail"]


def test_validation_errors_are_listed_briefly_without_the_input(client: TestClient) -> None:
    junk = "x" * 10_000
    body = {"images": [{"nope": junk}] * 32}
    response = client.post("/predict/batch", json=body)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert len(response.content) < 2000
    assert junk[:100] not in detail
    assert "images.0" in detail and "more problems" in detail
    v2 = client.post(_V2, json={"inputs": [1], "outputs": [junk] * 8})
    assert v2.status_code == 422
    assert len(v2.content) < 2000 and "more problems" in v2.json()["detail"]
    many_outputs = client.post(_V2, json={"inputs": [1], "outputs": [1] * 100_000})
    assert len(many_outputs.content) < 2000


# -- access control and limits ---------------------------------------------------------------


def test_api_key(make_client: ClientFactory, image_bytes: ImageBytes) -> None:
    client = make_client(api_key="s3cret")
    body = {"image": _b64(image_bytes())}
    missing = client.post("/predict", json=body)
    assert missing.status_code == 401
    assert "X-API-Key" in missing.json()["detail"]
    assert client.post("/predict", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/predict", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
    v2 = client.post("/v2/models/colors/infer", json={"inputs": []})
    assert v2.status_code == 401
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


def test_cors(make_client: ClientFactory) -> None:
    client = make_client(cors_origins=["https://shop.example"])
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = client.options("/predict", headers={"Origin": "https://shop.example", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    other = client.options("/predict", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    plain = make_client().get("/health", headers={"Origin": "https://shop.example"})
    assert "access-control-allow-origin" not in plain.headers


def test_rate_limit_per_client(make_client: ClientFactory, image_bytes: ImageBytes) -> None:
    client = make_client(rate_limit_per_s=0.1, rate_limit_burst=2)
    body = {"image": _b64(image_bytes())}
    assert [client.post("/predict", json=body).status_code for _ in range(2)] == [200, 200]
    limited = client.post("/predict", json=body)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 10
    assert "rate limit" in limited.json()["detail"]
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("trusted", "peer", "limited"),
    [
        ([], "127.0.0.1", True),  # no proxy configured: X-Forwarded-For is the client's say-so
        (["10.0.0.0/8"], "203.0.113.9", True),  # a proxy list, but this peer is not on it
        (["10.0.0.0/8"], "10.1.2.3", False),  # a trusted proxy: each forwarded client counts
    ],
)
def test_rotating_forwarded_for_dodges_the_rate_limit_only_through_trusted_proxies(
    tiny_bundle: Path, trusted: list[str], peer: str, limited: bool
) -> None:
    settings = ServeSettings(
        model=tiny_bundle, threads=1, rate_limit_per_s=0.01, rate_limit_burst=2,
        trusted_proxies=trusted,
    )  # fmt: skip
    with TestClient(create_app(settings), client=(peer, 40000)) as client:
        statuses = [
            client.post("/predict", json={}, headers={"X-Forwarded-For": f"198.51.100.{i}"})
            for i in range(5)
        ]
        assert (429 in {r.status_code for r in statuses}) is limited
        if not limited:  # one forwarded client is still limited on its own
            same = [
                client.post("/predict", json={}, headers={"X-Forwarded-For": "198.51.100.1"})
                for _ in range(3)
            ]
            assert same[-1].status_code == 429


def test_token_bucket_refills() -> None:
    from imgclf.serving.http.security import TokenBucketLimiter

    limiter = TokenBucketLimiter(rate=2.0, burst=1, max_clients=2)
    assert limiter.acquire("a", now=0.0) == 0.0
    assert limiter.acquire("a", now=0.1) == pytest.approx(0.4)
    assert limiter.acquire("a", now=0.6) == 0.0
    assert limiter.acquire("b", now=0.6) == 0.0
    limiter.acquire("c", now=0.6)
    assert limiter.acquire("a", now=0.6) == 0.0  # forgotten (bounded memory): full bucket again


# -- URL inputs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    rng = np.random.default_rng(0)
    noisy = np.clip(rng.normal((30, 200, 40), 20, size=(120, 160, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "JPEG", quality=95)
    body = buffer.getvalue()
    assert len(body) > 4096

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith(("/to-metadata", "/redirect?to=")):
                target = "http://169.254.169.254/latest/meta-data/"
                if self.path.startswith("/redirect?to="):
                    target = unquote(self.path.partition("=")[2])
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_url_input_from_an_allowed_local_server(
    make_client: ClientFactory, image_server: str
) -> None:
    client = make_client(url_allow_loopback=True)
    response = client.post("/predict", json={"url": f"{image_server}/shirt.jpg"})
    assert response.status_code == 200, response.text
    assert response.json()["class"] == "green"


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("LOCAL/shirt.jpg", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:10.0.0.1]/x.jpg", "private"),
        ("file:///etc/passwd", "scheme"),
        ("http://localhost:1/x.jpg", "loopback"),
    ],
)
def test_unsafe_urls_are_refused_by_default(
    client: TestClient, image_server: str, url: str, fragment: str
) -> None:
    response = client.post("/predict", json={"url": url.replace("LOCAL", image_server)})
    assert response.status_code == 400
    assert fragment in response.json()["detail"]


def test_redirect_to_metadata_is_refused(make_client: ClientFactory, image_server: str) -> None:
    client = make_client(url_allow_loopback=True)
    response = client.post("/predict", json={"url": f"{image_server}/to-metadata"})
    assert response.status_code == 400
    assert "169.254.169.254" in response.json()["detail"]


@pytest.mark.parametrize(
    "target", ["javascript:alert(1)", "mailto:x@y.example", "data:image/png;base64,AAAA"]
)
def test_redirect_to_another_scheme_is_400_with_a_reason(
    make_client: ClientFactory, image_server: str, target: str
) -> None:
    client = make_client(url_allow_loopback=True)
    url = f"{image_server}/redirect?to={quote(target, safe='')}"
    response = client.post("/predict", json={"url": url})
    assert response.status_code == 400, response.text
    assert f"scheme {target.partition(':')[0]!r}" in response.json()["detail"]


def test_url_allowlist_and_switch(make_client: ClientFactory, image_server: str) -> None:
    listed = make_client(url_allow_loopback=True, url_allowed_hosts=["images.example"])
    refused = listed.post("/predict", json={"url": f"{image_server}/x.jpg"})
    assert refused.status_code == 400
    assert "allow-list" in refused.json()["detail"]
    off = make_client(url_inputs=False)
    disabled = off.post("/predict", json={"url": f"{image_server}/x.jpg"})
    assert disabled.status_code == 400
    assert "disabled" in disabled.json()["detail"]


def test_url_body_over_the_cap_is_413(make_client: ClientFactory, image_server: str) -> None:
    client = make_client(url_allow_loopback=True, max_upload_bytes=1024)
    response = client.post("/predict", json={"url": f"{image_server}/x.jpg"})
    assert response.status_code == 413
