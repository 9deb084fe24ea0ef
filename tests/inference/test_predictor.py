"""The Predictor on the tiny colour bundle: real ONNX Runtime runs, typed results, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from imgclf.bundle import load_bundle
from imgclf.errors import (
    BundleError,
    ChecksumMismatchError,
    ConfigError,
    ImageDecodeError,
    ImageTooLargeError,
    InputError,
    UnsupportedMediaError,
)
from imgclf.inference import ClassScore, Prediction, Predictor
from imgclf.inference.predictions import softmax, to_predictions
from imgclf.inference.predictor import select_artifact
from imgclf.model_repository import SERVABLE_FORMATS

ImageFactory = Callable[..., bytes]


@pytest.fixture
def predictor(tiny_bundle: Path) -> Predictor:
    return Predictor.from_bundle(tiny_bundle, threads=1)


def test_metadata_comes_from_the_manifest(predictor: Predictor, tiny_bundle: Path) -> None:
    assert predictor.labels == ["red", "green", "blue"]
    assert predictor.preprocess_config.input_size == 32
    assert predictor.name == "colors"
    assert predictor.version == "1"
    assert predictor.artifact == "onnx"
    assert "colors" in repr(predictor)


@pytest.mark.parametrize("color", ["red", "green", "blue"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_predicts_the_colour(
    predictor: Predictor, image_bytes: ImageFactory, color: str, fmt: str
) -> None:
    prediction = predictor.predict(image_bytes(color, fmt=fmt, size=(80, 50)), top_k=2)
    assert prediction.label == color
    assert prediction.probability > 0.5
    assert len(prediction.top_k) == 2
    assert prediction.top_k[0] == ClassScore(color, prediction.probability)
    assert prediction.top_k[0].probability >= prediction.top_k[1].probability


def test_predict_accepts_paths_and_file_objects(
    predictor: Predictor, image_bytes: ImageFactory, tmp_path: Path
) -> None:
    path = tmp_path / "green.png"
    path.write_bytes(image_bytes("green", fmt="PNG"))
    assert predictor.predict(path).label == "green"
    assert predictor.predict(str(path)).label == "green"
    with path.open("rb") as handle:
        assert predictor.predict(handle).label == "green"


def test_predict_batch_keeps_order(predictor: Predictor, image_bytes: ImageFactory) -> None:
    colors = ["blue", "red", "red", "green", "blue"]
    predictions = predictor.predict_batch([image_bytes(c, seed=i) for i, c in enumerate(colors)])
    assert [p.label for p in predictions] == colors
    assert predictor.predict_batch([]) == []


def test_top_k_is_capped_and_probabilities_sum_to_one(
    predictor: Predictor, image_bytes: ImageFactory
) -> None:
    prediction = predictor.predict(image_bytes("red"), top_k=10)
    assert prediction.top_k[0].label == "red"
    assert len(prediction.top_k) == 3
    assert sum(s.probability for s in prediction.top_k) == pytest.approx(1.0, abs=1e-5)


def test_to_dict_matches_the_contract(predictor: Predictor, image_bytes: ImageFactory) -> None:
    data = predictor.predict(image_bytes("blue"), top_k=2).to_dict()
    assert set(data) == {"class", "probability", "top_k"}
    assert data["class"] == "blue"
    assert data["top_k"][0] == {"class": "blue", "prob": data["probability"]}
    assert set(data["top_k"][1]) == {"class", "prob"}
    json.dumps(data)  # plain JSON types only


def test_run_pixels_equals_run_on_normalised_batch(predictor: Predictor) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    by_pixels = predictor.run_pixels(pixels)
    normalised = (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5
    by_floats = predictor.run(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(by_pixels, by_floats, rtol=1e-5, atol=1e-6)
    assert by_pixels.shape == (4, 3)
    np.testing.assert_allclose(by_pixels.sum(axis=1), 1.0, rtol=1e-5)


def test_large_batches_are_split_without_changing_results(predictor: Predictor) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(150, 32, 32, 3), dtype=np.uint8)
    whole = predictor.run_pixels(pixels)
    one_by_one = np.concatenate([predictor.run_pixels(pixels[i : i + 1]) for i in range(150)])
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-5, atol=1e-6)


def test_run_on_empty_batch(predictor: Predictor) -> None:
    assert predictor.run(np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 3)


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((1, 32, 32, 3), np.float32),  # wrong dtype
        np.zeros((1, 31, 32, 3), np.uint8),  # wrong size
        np.zeros((32, 32, 3), np.uint8),  # missing batch axis
        np.zeros((1, 3, 32, 32), np.uint8),  # NCHW instead of NHWC
    ],
)
def test_run_pixels_refuses_wrong_shapes(predictor: Predictor, pixels: np.ndarray) -> None:
    with pytest.raises(InputError, match=r"\(N, 32, 32, 3\)"):
        predictor.run_pixels(pixels)


def test_run_refuses_wrong_shape(predictor: Predictor) -> None:
    with pytest.raises(InputError, match=r"\(N, 3, 32, 32\)"):
        predictor.run(np.zeros((1, 32, 32, 3), np.float32))


@pytest.mark.parametrize("top_k", [0, -1, True, 1.5])
def test_bad_top_k_is_an_input_error(predictor: Predictor, top_k: object) -> None:
    with pytest.raises(InputError, match="top_k"):
        predictor.to_predictions(np.ones((1, 3)) / 3, top_k=top_k)  # type: ignore[arg-type]


def test_bad_images_raise_specific_input_errors(
    predictor: Predictor, image_bytes: ImageFactory, tmp_path: Path
) -> None:
    with pytest.raises(ImageDecodeError, match="zero bytes"):
        predictor.predict(b"")
    with pytest.raises(UnsupportedMediaError):
        predictor.predict(b"this is not an image at all")
    with pytest.raises(ImageDecodeError):
        predictor.predict(image_bytes("red")[:200])
    with pytest.raises(ImageDecodeError, match="no such file"):
        predictor.predict(tmp_path / "missing.jpg")


def test_max_pixels_is_enforced(tiny_bundle: Path, image_bytes: ImageFactory) -> None:
    small = Predictor.from_bundle(tiny_bundle, max_pixels=1000)
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        small.predict(image_bytes("red", size=(64, 48)))


def test_first_bad_image_fails_predict_batch(
    predictor: Predictor, image_bytes: ImageFactory
) -> None:
    with pytest.raises(InputError):
        predictor.predict_batch([image_bytes("red"), b"junk"])


def test_threads_must_be_positive(tiny_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="threads"):
        Predictor.from_bundle(tiny_bundle, threads=0)


def test_unknown_artifact_names_available_ones(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="available: onnx"):
        Predictor.from_bundle(tiny_bundle, artifact="onnx-int8")


def test_auto_prefers_int8(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    int8 = tiny_bundle / "model.int8.onnx"
    int8.write_bytes((tiny_bundle / "model.onnx").read_bytes())
    bundle.add_artifact("onnx-int8", int8, format="onnx", precision="int8")
    assert Predictor.from_bundle(tiny_bundle).artifact == "onnx-int8"
    assert Predictor.from_bundle(tiny_bundle, artifact="onnx").artifact == "onnx"


def test_bundle_without_runnable_artifact(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    del bundle.manifest.artifacts["onnx"]
    weights = tiny_bundle / "model.pt"
    weights.write_bytes(b"not really weights")
    bundle.add_artifact("pytorch", weights, format="pytorch")
    with pytest.raises(BundleError, match=r"no runnable artifact.*imgclf export"):
        Predictor.from_bundle(tiny_bundle)
    with pytest.raises(ConfigError, match="no inference runtime for 'pytorch'"):
        Predictor.from_bundle(tiny_bundle, artifact="pytorch")


def test_corrupt_artifact_is_refused(tiny_bundle: Path) -> None:
    (tiny_bundle / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ChecksumMismatchError):
        Predictor.from_bundle(tiny_bundle)


def test_unloadable_model_is_a_bundle_error(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    (tiny_bundle / "model.onnx").write_bytes(b"not an onnx protobuf")
    bundle.add_artifact("onnx", tiny_bundle / "model.onnx", format="onnx")  # checksum matches
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        Predictor.from_bundle(tiny_bundle)


def test_input_size_mismatch_is_detected(tiny_bundle: Path) -> None:
    manifest_path = tiny_bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["preprocessing"]["input_size"] = 48
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"expects 32px inputs.*says 48px"):
        Predictor.from_bundle(tiny_bundle)


def test_missing_bundle_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        Predictor.from_bundle(tmp_path / "nope")


def test_concurrent_predictions_are_consistent(
    predictor: Predictor, image_bytes: ImageFactory
) -> None:
    images = {c: image_bytes(c) for c in ("red", "green", "blue")}
    failures: list[str] = []

    def worker(color: str) -> None:
        for _ in range(20):
            label = predictor.predict(images[color]).label
            if label != color:
                failures.append(f"{color} -> {label}")

    threads = [threading.Thread(target=worker, args=(c,)) for c in images for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_softmax_is_stable_for_large_logits() -> None:
    probs = softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(probs).all()
    assert probs[0, 0] == pytest.approx(1.0)


def test_to_predictions_checks_columns() -> None:
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        to_predictions(np.ones((1, 3)), ["a", "b"])
    (prediction,) = to_predictions(np.array([[0.2, 0.8]]), ["a", "b"], top_k=1)
    assert prediction == Prediction("b", pytest.approx(0.8), [ClassScore("b", pytest.approx(0.8))])


def test_inference_never_imports_torch(tiny_bundle: Path, image_bytes: ImageFactory) -> None:
    image = tiny_bundle / "red.jpg"
    image.write_bytes(image_bytes("red"))
    code = (
        "import sys\n"
        "from imgclf.inference import Predictor\n"
        f"p = Predictor.from_bundle({str(tiny_bundle)!r})\n"
        f"assert p.predict({str(image)!r}).label == 'red'\n"
        "import imgclf.inference.cli, imgclf.inference.batch\n"
        "leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(leaked))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_one_artifact_choice_for_every_format_filter(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    lite = tiny_bundle / "model.tflite"
    lite.write_bytes(b"not really a tflite model")
    bundle.add_artifact("tflite", lite, format="tflite")
    assert select_artifact(bundle) == "onnx"
    del bundle.manifest.artifacts["onnx"]
    assert select_artifact(bundle) == "tflite"
    with pytest.raises(BundleError, match=r"no onnx artifact \(has: tflite\).*imgclf export"):
        select_artifact(bundle, formats=SERVABLE_FORMATS)  # what the Triton export serves
