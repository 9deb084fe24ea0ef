"""The per-image decode budget: scans, frames, memory, deadline, and the shared memory pool."""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image

from imgclf.errors import ImageTooCostlyError, ImageTooLargeError, OverloadedError
from imgclf.image_budget import (
    DecodeLane,
    DecodeLaneError,
    DecodeMemoryPool,
    ImageBudget,
    count_jpeg_scans,
    decode_bytes,
)
from imgclf.preprocessing import open_image
from imgtools import animated_gif, many_scan_jpeg, raw_png


def _jpeg(progressive: bool) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, "JPEG", progressive=progressive)
    return buffer.getvalue()


def test_scans_are_counted_from_the_markers() -> None:
    assert count_jpeg_scans(_jpeg(progressive=False)) == 1
    assert count_jpeg_scans(_jpeg(progressive=True)) > 1
    base = count_jpeg_scans(many_scan_jpeg((64, 64), 0))
    assert count_jpeg_scans(many_scan_jpeg((64, 64), 100)) == base + 100
    assert count_jpeg_scans(b"\xff\xd8not a jpeg at all") == 0


def test_too_many_scans_are_refused_before_decoding() -> None:
    with pytest.raises(ImageTooCostlyError, match="scans exceeds the limit of 64"):
        open_image(many_scan_jpeg((2000, 2000), 500), budget=ImageBudget())
    # 40 scans are few, but 40 passes over 16 MP are more work than the budget allows.
    with pytest.raises(ImageTooCostlyError, match="pixel-scans"):
        open_image(many_scan_jpeg((4000, 4000), 30), budget=ImageBudget())
    assert open_image(_jpeg(progressive=True), budget=ImageBudget()).size == (64, 64)


def test_decode_memory_counts_bytes_per_pixel_not_pixels() -> None:
    assert decode_bytes("RGB", (100, 100)) == 100 * 100 * 4
    assert decode_bytes("L", (100, 100)) == 100 * 100 * 5  # + the RGB copy
    assert decode_bytes("I;16", (100, 100)) > decode_bytes("L", (100, 100))
    with pytest.raises(ImageTooLargeError, match="MiB to decode; the limit is 128 MiB"):
        open_image(raw_png((4800, 5000), 16, 0), budget=ImageBudget())
    small = ImageBudget(max_decode_bytes=1 << 20)
    with pytest.raises(ImageTooLargeError, match="the limit is 1 MiB"):
        open_image(raw_png((400, 400), 8, 6), budget=small)


def test_frames_and_pixels_name_their_caps() -> None:
    with pytest.raises(ImageTooCostlyError, match="1,001 frames exceeds the limit of 1,000"):
        open_image(animated_gif(1001), budget=ImageBudget())
    assert open_image(animated_gif(20), budget=ImageBudget()).size == (8, 8)
    bomb = raw_png((64, 64), 8, 0, (100_000, 100_000))
    with pytest.raises(ImageTooLargeError, match="limit of 1,000,000 pixels"):
        open_image(bomb, budget=ImageBudget(max_pixels=1_000_000))


def test_decoding_stops_at_the_deadline() -> None:
    data = raw_png((3000, 3000), 16, 0)
    with pytest.raises(ImageTooCostlyError, match="longer than 1e-06 s"):
        open_image(data, budget=ImageBudget(timeout_s=1e-6))


def test_memory_pool_makes_large_decodes_take_turns() -> None:
    pool = DecodeMemoryPool(100)
    with pytest.raises(ImageTooLargeError, match="at most 0 MiB"), pool.reserve(101, None):
        pass
    with pool.reserve(60, None):
        with pytest.raises(OverloadedError), pool.reserve(60, time.monotonic() + 0.05):
            pass
        got_in = threading.Event()

        def second() -> None:
            with pool.reserve(60, time.monotonic() + 5):
                got_in.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not got_in.wait(0.1)
    thread.join(5)
    assert got_in.is_set()
    assert pool.used == 0


def test_decode_lane_sends_costly_images_elsewhere() -> None:
    lane = DecodeLane(max_decode_bytes=32 << 20, max_jpeg_scan_pixels=100_000_000)
    with pytest.raises(DecodeLaneError, match="77 MiB to decode"):
        open_image(raw_png((3000, 3000), 16, 0), budget=ImageBudget(), lane=lane)
    progressive = many_scan_jpeg((2000, 2000), 34)
    scans = count_jpeg_scans(progressive)
    with pytest.raises(DecodeLaneError, match=f"{scans * 4_000_000:,} pixel-scans"):
        open_image(progressive, budget=ImageBudget(), lane=lane)
    # Within the lane: a baseline JPEG, a progressive one, a GIF (one frame is decoded).
    for data in (_jpeg(progressive=False), _jpeg(progressive=True), animated_gif(20)):
        assert open_image(data, budget=ImageBudget(), lane=lane).mode == "RGB"
