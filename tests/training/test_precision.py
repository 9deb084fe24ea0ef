"""Feature precision is chosen by capability and timing, overridable, and recorded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from imgclf.training.precision import MIN_SPEEDUP, CpuFeatures, choose_precision
from imgclf.training.recipe import TrainConfig
from imgclf.training.trainer import train

CPU = torch.device("cpu")
AVX2 = CpuFeatures(capability="AVX2", avx512_bf16=False, amx=False)
SAPPHIRE_RAPIDS = CpuFeatures(capability="AVX512", avx512_bf16=True, amx=True)


class FakeProbe:
    """Times per dtype (None: fp32), counting calls."""

    def __init__(self, fp32_s: float, reduced_s: float) -> None:
        self.seconds = {None: fp32_s, torch.bfloat16: reduced_s}
        self.calls = 0

    def __call__(self, dtype: torch.dtype | None) -> float:
        self.calls += 1
        return self.seconds[dtype]


def test_avx2_only_cpu_stays_fp32_without_timing() -> None:
    probe = FakeProbe(0.1, 0.01)
    chosen = choose_precision(CPU, None, probe, cpu=AVX2)
    assert chosen.name == "fp32"
    assert chosen.dtype is None
    assert "CPU capability AVX2" in chosen.reason and "emulated" in chosen.reason
    assert probe.calls == 0


def test_native_bf16_that_is_faster_is_used() -> None:
    probe = FakeProbe(0.11, 0.05)
    chosen = choose_precision(CPU, None, probe, cpu=SAPPHIRE_RAPIDS)
    assert chosen.name == "bf16"
    assert chosen.dtype is torch.bfloat16
    assert "AVX-512 BF16" in chosen.reason and "50 ms vs fp32 110 ms" in chosen.reason
    assert probe.calls == 8  # one warm-up each, then three alternated rounds


def test_native_bf16_that_is_not_faster_is_refused() -> None:
    probe = FakeProbe(0.10, 0.10 / (MIN_SPEEDUP - 0.05))
    chosen = choose_precision(CPU, None, probe, cpu=SAPPHIRE_RAPIDS)
    assert chosen.name == "fp32"
    assert f"not {MIN_SPEEDUP}x faster" in chosen.reason


def test_the_timing_names_the_fp32_engine_it_raced() -> None:
    """On a CPU fp32 runs in ONNX Runtime: bf16 (torch) must beat that, and the reason says so."""
    chosen = choose_precision(
        CPU, None, FakeProbe(0.05, 0.10), cpu=SAPPHIRE_RAPIDS, fp32_name="fp32 (onnxruntime)"
    )
    assert chosen.name == "fp32"
    assert "bf16 100 ms vs fp32 (onnxruntime) 50 ms per batch" in chosen.reason


@pytest.mark.parametrize(
    ("requested", "name", "reason"), [(True, "bf16", "--bf16"), (False, "fp32", "--no-bf16")]
)
def test_flags_override_capability_and_timing(requested: bool, name: str, reason: str) -> None:
    probe = FakeProbe(0.1, 0.1)
    for cpu in (AVX2, SAPPHIRE_RAPIDS):
        chosen = choose_precision(CPU, requested, probe, cpu=cpu)
        assert (chosen.name, chosen.reason) == (name, f"{reason} given")
    assert probe.calls == 0


def test_this_machine_is_described() -> None:
    detected = CpuFeatures.detect()
    assert detected.capability == torch.backends.cpu.get_cpu_capability()
    assert detected.describe().startswith(f"CPU capability {detected.capability}, ")


@pytest.mark.slow  # trains a model: seconds to minutes
def test_forced_bf16_is_recorded_and_final_metrics_stay_fp32(
    color_dataset: Path, tmp_path: Path
) -> None:
    config = TrainConfig(image_size=64, batch_size=8, epochs=0, threads=2, bf16=True)
    result = train(color_dataset, tmp_path / "run", config, report=False)
    assert result is not None
    training = result.bundle.manifest.training
    assert training["precision"] == {"name": "bf16", "reason": "--bf16 given"}
    assert training["bf16"] is True
    fp32_config = dataclasses.replace(config, bf16=False)
    fp32 = train(color_dataset, tmp_path / "fp32", fp32_config, report=False)
    assert fp32 is not None
    assert fp32.bundle.manifest.training["precision"]["name"] == "fp32"
    # Metrics come from an fp32 pass in both runs (only the head fit saw bf16 features).
    assert result.metrics["test"]["top1"] == pytest.approx(fp32.metrics["test"]["top1"])
