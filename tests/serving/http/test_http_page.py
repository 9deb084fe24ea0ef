"""The web page in headless Chromium: pick, drop and paste a photo, see the top-k bars.

Uses the system Chromium (``apt-get install chromium``) through Playwright; no browser download.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgclf.serving.http import ServeSettings, create_app

CHROMIUM = Path(os.environ.get("IMGCLF_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}"),
]
ImageBytes = Callable[..., bytes]


@pytest.fixture
def live_server(tiny_bundle: Path) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, in a background thread."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = ServeSettings(model=tiny_bundle, threads=1, port=port)
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(15)


@pytest.fixture
def page(live_server: str) -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.set_default_timeout(60_000)  # generous: CI machines are shared and noisy
        page.requests_seen = []
        page.on("request", lambda request: page.requests_seen.append(request.url))
        page.goto(live_server, wait_until="domcontentloaded")
        yield page
        browser.close()


def _wait_for_class(page: Any, label: str) -> None:
    page.wait_for_function(
        "label => document.getElementById('top-class').textContent === label", arg=label
    )


def _dispatch_file(page: Any, event: str, data: bytes, mime: str) -> None:
    """Fire a drop or paste event carrying an in-memory file, as a person dragging would."""
    page.evaluate(
        """([event, b64, mime]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "photo", { type: mime }));
            if (event === "drop") {
                const zone = document.getElementById("drop-zone");
                const drop = new DragEvent("drop", { dataTransfer: transfer, bubbles: true });
                zone.dispatchEvent(drop);
            } else {
                document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer }));
            }
        }""",
        [event, base64.b64encode(data).decode(), mime],
    )


def test_pick_a_photo_and_see_bars(
    page: Any, live_server: str, image_bytes: ImageBytes, tmp_path: Path
) -> None:
    page.wait_for_function("document.getElementById('model-info').textContent.includes('colors')")
    assert "red, green, blue" in page.text_content("#model-info")
    photo = tmp_path / "blue.png"
    photo.write_bytes(image_bytes("blue", fmt="PNG", size=(240, 180)))
    page.set_input_files("#file-input", str(photo))
    _wait_for_class(page, "blue")
    bars = page.query_selector_all("#bars li")
    assert [bar.get_attribute("data-class") for bar in bars] == ["blue", "green", "red"]
    width = page.eval_on_selector("#bars li .bar-fill", "el => parseFloat(el.style.width)")
    assert width > 90
    assert page.is_visible("#preview")
    assert page.eval_on_selector("#preview", "img => img.naturalWidth") == 240
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert all(url.startswith(live_server) or url.startswith("blob:") for url in page.requests_seen)


def test_api_key_field_appears_only_when_needed(page: Any) -> None:
    assert not page.is_visible("#api-key")


def test_camera_input_is_offered(page: Any) -> None:
    camera = page.query_selector("#camera-input")
    assert camera.get_attribute("accept") == "image/*"
    assert camera.get_attribute("capture") == "environment"


def test_drop_and_paste(page: Any, image_bytes: ImageBytes) -> None:
    _dispatch_file(page, "drop", image_bytes("red"), "image/jpeg")
    _wait_for_class(page, "red")
    _dispatch_file(page, "paste", image_bytes("green", fmt="PNG"), "image/png")
    _wait_for_class(page, "green")


def test_top_k_setting_and_errors_are_shown(
    page: Any, image_bytes: ImageBytes, tmp_path: Path
) -> None:
    page.fill("#top-k", "2")
    photo = tmp_path / "red.jpg"
    photo.write_bytes(image_bytes("red"))
    page.set_input_files("#file-input", str(photo))
    _wait_for_class(page, "red")
    assert len(page.query_selector_all("#bars li")) == 2
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"this is not an image at all")
    page.set_input_files("#file-input", str(fake))
    page.wait_for_selector("#error:not([hidden])")
    assert "415" in page.text_content("#error")
    assert "not a recognised image format" in page.text_content("#error")
