"""The Lambda handler on API Gateway v1/v2 and direct events, end to end with a real ONNX model."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lambda_events import FakeContext, http_v1_event, http_v2_event, load_event, log_records

from imgclf.serving.aws_lambda.handler import handler
from imgclf.serving.aws_lambda.settings import LAMBDA_SYNC_PAYLOAD_LIMIT

pytestmark = pytest.mark.usefixtures("lambda_env")


def call(event: Any) -> dict[str, Any]:
    response = handler(event, FakeContext())
    assert isinstance(response, dict)
    return response


def call_http(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Invoke with a proxy event; return the status and the decoded JSON body."""
    response = call(event)
    assert response["headers"]["Content-Type"] == "application/json"
    assert response["isBase64Encoded"] is False
    return response["statusCode"], json.loads(response["body"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_event_fixtures_are_recognised() -> None:
    from imgclf.serving.aws_lambda.events import EventKind, event_kind

    assert event_kind(load_event("apigateway_v1_proxy")) is EventKind.API_GATEWAY_V1
    assert event_kind(load_event("apigateway_v2_http_api")) is EventKind.API_GATEWAY_V2
    assert event_kind(load_event("s3_object_created_put")) is EventKind.S3
    assert event_kind({"url": "https://example.com/a.jpg"}) is EventKind.DIRECT


@pytest.mark.parametrize("color", ["red", "green", "blue"])
def test_http_api_v2_json_base64_image(image_bytes: Callable[..., bytes], color: str) -> None:
    status, body = call_http(http_v2_event(json.dumps({"image": b64(image_bytes(color))})))
    assert status == 200
    assert body["class"] == color
    assert set(body) == {"class", "probability", "top_k", "model"}
    assert body["model"] == {"name": "colors", "version": "1"}
    assert body["top_k"][0]["class"] == color
    assert set(body["top_k"][0]) == {"class", "prob"}
    assert body["probability"] == pytest.approx(body["top_k"][0]["prob"])
    assert sum(entry["prob"] for entry in body["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_rest_api_v1_binary_body(image_bytes: Callable[..., bytes]) -> None:
    event = http_v1_event(image_bytes("blue", fmt="PNG"), content_type="image/png")
    status, body = call_http(event)
    assert status == 200
    assert body["class"] == "blue"


def test_rest_api_v1_json_body_with_query_top_k(image_bytes: Callable[..., bytes]) -> None:
    event = http_v1_event(json.dumps({"image": b64(image_bytes("green"))}), query={"top_k": "2"})
    status, body = call_http(event)
    assert status == 200
    assert body["class"] == "green"
    assert len(body["top_k"]) == 2


def multipart(fields: dict[str, tuple[str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body as browsers and curl -F send it, and its Content-Type."""
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    chunks = []
    for name, (filename, data) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        head += "Content-Type: image/jpeg\r\n\r\n" if filename else "\r\n"
        chunks.append(head.encode() + data + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("make_event", [http_v1_event, http_v2_event])
def test_multipart_form_upload(
    image_bytes: Callable[..., bytes], make_event: Callable[..., dict[str, Any]]
) -> None:
    image = image_bytes("blue", size=(300, 200))
    body, content_type = multipart({"top_k": (None, b"2"), "file": ("shirt.jpg", image)})
    status, result = call_http(make_event(body, content_type=content_type))
    assert status == 200
    assert result["class"] == "blue"
    assert len(result["top_k"]) == 2


def test_multipart_without_file_field(image_bytes: Callable[..., bytes]) -> None:
    body, content_type = multipart({"picture": ("a.jpg", image_bytes())})
    status, result = call_http(http_v2_event(body, content_type=content_type))
    assert status == 422
    assert "'file'" in result["detail"]
    status, result = call_http(http_v2_event(body, content_type="multipart/form-data"))
    assert status == 400
    assert "boundary" in result["detail"]


def test_url_safe_base64(image_bytes: Callable[..., bytes]) -> None:
    encoded = base64.urlsafe_b64encode(image_bytes("green", size=(120, 90))).decode().rstrip("=")
    status, body = call_http(http_v2_event(json.dumps({"image": encoded})))
    assert status == 200
    assert body["class"] == "green"


def test_json_top_k_overrides_default(image_bytes: Callable[..., bytes]) -> None:
    status, body = call_http(http_v2_event(json.dumps({"image": b64(image_bytes()), "top_k": 1})))
    assert status == 200
    assert len(body["top_k"]) == 1


def test_http_api_v2_binary_body_with_base64_json(image_bytes: Callable[..., bytes]) -> None:
    """REST APIs with binary media types */* base64-encode JSON bodies too."""
    raw = json.dumps({"image": b64(image_bytes("red"))}).encode()
    status, body = call_http(http_v2_event(raw, content_type="application/json"))
    assert status == 200
    assert body["class"] == "red"


def test_direct_invocation(image_bytes: Callable[..., bytes]) -> None:
    body = call({"image": b64(image_bytes("green")), "top_k": 3})
    assert body["class"] == "green"
    assert len(body["top_k"]) == 3
    assert body["model"]["name"] == "colors"


def test_direct_invocation_data_url(image_bytes: Callable[..., bytes]) -> None:
    body = call({"image": "data:image/jpeg;base64," + b64(image_bytes("blue"))})
    assert body["class"] == "blue"


def test_direct_invocation_bad_input_is_reported_not_raised() -> None:
    body = call({"image": "not base64 at all!"})
    assert body["statusCode"] == 400
    assert "base64" in body["detail"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ('{"image": "@@@"}', 400, "base64"),
        ("{not json", 400, "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, 400, "too deeply"),
        ('{"image": "AAAA", "top_k": ' + "9" * 5000 + "}", 400, "too many digits"),
        ("", 400, "empty"),
        ('{"picture": "x"}', 422, "unknown fields"),
        ('{"url": "https://example.com/a.jpg", "image": "AAAA"}', 422, "exactly one"),
        ("{}", 422, "exactly one"),
        ('{"image": 12}', 422, "base64 string"),
        ('{"image": "AAAA", "top_k": 0}', 422, "top_k"),
        ("[1, 2]", 422, "JSON object"),
    ],
)
def test_bad_requests_get_4xx_with_detail(body: str, status: int, fragment: str) -> None:
    got_status, got = call_http(http_v2_event(body))
    assert got_status == status
    assert set(got) == {"detail"}
    assert fragment in got["detail"]


def test_bad_base64_binary_body() -> None:
    event = http_v2_event(b"", content_type="image/jpeg")
    event["body"], event["isBase64Encoded"] = "%%%not-base64%%%", True
    status, body = call_http(event)
    assert status == 400
    assert "base64" in body["detail"]


def test_bad_query_top_k(image_bytes: Callable[..., bytes]) -> None:
    event = http_v1_event(image_bytes(), content_type="image/jpeg", query={"top_k": "-1"})
    status, body = call_http(event)
    assert status == 422
    assert "top_k" in body["detail"]


def test_not_an_image_is_415() -> None:
    status, body = call_http(http_v2_event(b"hello, this is text", content_type="image/jpeg"))
    assert status == 415
    assert "not a recognised image" in body["detail"]


def test_corrupt_jpeg_is_400(image_bytes: Callable[..., bytes]) -> None:
    truncated = image_bytes("red", size=(256, 256))[:300]
    status, body = call_http(http_v2_event(json.dumps({"image": b64(truncated)})))
    assert status == 400
    assert "corrupt or truncated" in body["detail"]


def test_get_is_405() -> None:
    event = load_event("apigateway_v1_proxy")
    event["httpMethod"] = "GET"
    status, body = call_http(event)
    assert status == 405
    assert "POST" in body["detail"]


def test_payload_over_lambda_limit_is_413() -> None:
    oversized = b"\xff" * (LAMBDA_SYNC_PAYLOAD_LIMIT * 3 // 4 + 3)  # base64 > 6 MB
    status, body = call_http(http_v2_event(oversized, content_type="image/jpeg"))
    assert status == 413
    assert "6 MB" in body["detail"]
    assert "S3" in body["detail"]
    direct = call({"image": b64(oversized)})
    assert direct["statusCode"] == 413


def test_max_request_bytes_setting(
    monkeypatch: pytest.MonkeyPatch, image_bytes: Callable[..., bytes]
) -> None:
    monkeypatch.setenv("MAX_REQUEST_BYTES", "100")
    status, body = call_http(http_v2_event(image_bytes(), content_type="image/jpeg"))
    assert status == 413
    assert "MAX_REQUEST_BYTES" in body["detail"]


def test_too_many_pixels_is_413(image_bytes: Callable[..., bytes]) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (6000, 5000)).save(buffer, format="PNG")  # 30 MP, a few KB
    status, body = call_http(http_v2_event(buffer.getvalue(), content_type="image/png"))
    assert status == 413
    assert "pixels" in body["detail"]


@pytest.fixture
def image_server(image_bytes: Callable[..., bytes]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving a red JPEG at /red.jpg."""
    payload = image_bytes("red")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/red.jpg" else 404)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_url_is_fetched(monkeypatch: pytest.MonkeyPatch, image_server: str) -> None:
    monkeypatch.setenv("URL_ALLOW_LOOPBACK", "1")
    status, body = call_http(http_v2_event(json.dumps({"url": f"{image_server}/red.jpg"})))
    assert status == 200
    assert body["class"] == "red"
    status, body = call_http(http_v2_event(json.dumps({"url": f"{image_server}/missing.jpg"})))
    assert status == 400
    assert "404" in body["detail"]


def test_url_to_private_address_is_refused(image_server: str) -> None:
    """Without the local-testing switch, loopback and metadata addresses are refused (SSRF)."""
    for url in (f"{image_server}/red.jpg", "http://169.254.169.254/latest/meta-data/"):
        status, body = call_http(http_v2_event(json.dumps({"url": url})))
        assert status == 400
        assert "address" in body["detail"]


def test_missing_bundle_is_500(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_URI", str(tmp_path / "nowhere"))
    status, body = call_http(http_v2_event('{"image": "AAAA"}'))
    assert status == 500
    assert "does not exist" in body["detail"]


def test_bad_setting_is_500_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOP_K", "many")
    status, body = call_http(http_v2_event('{"image": "AAAA"}'))
    assert status == 500
    assert "TOP_K" in body["detail"]


def test_model_loaded_once_and_logs_are_json(
    image_bytes: Callable[..., bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    event = http_v2_event(json.dumps({"image": b64(image_bytes())}))
    for _ in range(3):
        assert call_http(event)[0] == 200
    call_http(http_v2_event("{}"))
    records = log_records(capsys.readouterr().out)
    assert [r["event"] for r in records].count("model_loaded") == 1
    requests = [r for r in records if r["event"] == "request"]
    assert [r["status"] for r in requests] == [200, 200, 200, 422]
    assert all(r["request_id"] == FakeContext().aws_request_id for r in records)
    assert requests[0]["label"] == "red"
    assert "exactly one" in requests[-1]["detail"]
    loaded = next(r for r in records if r["event"] == "model_loaded")
    assert loaded["artifact"] == "onnx"
    assert loaded["level"] == "INFO"


def test_handler_path_imports_neither_torch_nor_fastapi_nor_boto3(
    tiny_bundle: Path, image_bytes: Callable[..., bytes]
) -> None:
    event = http_v2_event(json.dumps({"image": b64(image_bytes("blue"))}))
    script = (
        "import json, sys\n"
        "from imgclf.serving.aws_lambda.handler import handler\n"
        "response = handler(json.loads(sys.stdin.read()), None)\n"
        "assert json.loads(response['body'])['class'] == 'blue', response\n"
        "heavy = sorted({'torch', 'fastapi', 'boto3', 'timm'} & set(sys.modules))\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(event),
        capture_output=True,
        text=True,
        env={"MODEL_URI": str(tiny_bundle), "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


@pytest.mark.parametrize("preload", ["1", "0"])
def test_preload_model_loads_during_import(tiny_bundle: Path, preload: str) -> None:
    script = (
        "import json, sys\n"
        "from imgclf.serving.aws_lambda import model_store\n"
        "import imgclf.serving.aws_lambda.handler\n"
        "print('LOADED', bool(model_store._cache))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"MODEL_URI": str(tiny_bundle), "PRELOAD_MODEL": preload, "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"LOADED {preload == '1'}" in result.stdout
    assert ('"event": "model_loaded"' in result.stdout) is (preload == "1")


def test_preload_failure_is_logged_not_raised(tmp_path: Path) -> None:
    script = "import imgclf.serving.aws_lambda.handler\nprint('IMPORTED')\n"
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"MODEL_URI": str(tmp_path / "absent"), "PRELOAD_MODEL": "1", "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "IMPORTED" in result.stdout
    assert '"event": "preload_failed"' in result.stdout
