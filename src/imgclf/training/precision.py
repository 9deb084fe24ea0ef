"""Precision of feature extraction: reduced (bf16/fp16) only where it is native and faster.

``torch.autocast("cpu", dtype=torch.bfloat16)`` runs on any x86 CPU, but without AVX-512 BF16 or
AMX every bf16 matrix product is emulated: on an AVX2-only EPYC a batch of 16 images took 0.75 s
in bf16 against 0.11 s in fp32. So the default (``bf16=None``, "auto") decides in two steps:

1. **Capability**: the CPU must have AVX-512 BF16 or AMX tiles (``torch.cpu``'s checks; the
   dispatch level ``torch.backends.cpu.get_cpu_capability()`` is named in the reason); a CUDA
   device uses bf16 where it supports it, else fp16.
2. **Timing**: a short probe (a few batches of real training images, each precision timed
   alternately, best of several) must show the reduced precision clearly faster
   (:data:`MIN_SPEEDUP`), since support alone does not promise speed for every network.

``--bf16``/``--no-bf16`` (``bf16=True``/``False``) skip both steps. The choice and its reason go
to stderr and into the manifest (``training.precision``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

log = logging.getLogger(__name__)

#: Reduced precision must be at least this many times faster than fp32 in the probe.
MIN_SPEEDUP = 1.15

#: A probe: runs one timed forward pass at a dtype (None: fp32) and returns its seconds.
Probe = Callable[[torch.dtype | None], float]


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU can run natively, as torch sees it."""

    capability: str
    avx512_bf16: bool
    amx: bool

    @classmethod
    def detect(cls) -> CpuFeatures:
        """The features of this machine's CPU."""
        cpu = torch.cpu
        return cls(
            capability=str(torch.backends.cpu.get_cpu_capability()),
            avx512_bf16=bool(cpu._is_avx512_bf16_supported()),
            amx=bool(cpu._is_amx_tile_supported()),
        )

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 matrix products run in hardware."""
        return self.avx512_bf16 or self.amx

    def describe(self) -> str:
        """E.g. ``CPU capability AVX2, no AVX-512 BF16, no AMX``."""
        flags = [
            f"{'' if on else 'no '}{name}"
            for name, on in (("AVX-512 BF16", self.avx512_bf16), ("AMX", self.amx))
        ]
        return f"CPU capability {self.capability}, {', '.join(flags)}"


@dataclass(frozen=True)
class Precision:
    """The precision features are extracted in, and why.

    Attributes:
        name: ``fp32``, ``bf16`` or ``fp16``.
        reason: One sentence a person can check (capability, timing, or the flag given).
    """

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        """Autocast to this precision on ``device`` (a no-op for fp32)."""
        return autocast(device, self.dtype)

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly form for the manifest."""
        return asdict(self)


#: Full precision, the default of every caller that does not choose.
FP32 = Precision("fp32", "default")


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[None]:
    """Autocast to ``dtype`` on ``device``; a no-op for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _reduced_dtype(device: torch.device) -> str:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def _native(device: torch.device, cpu: CpuFeatures | None) -> tuple[bool, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return True, f"CUDA device {name}"
    if device.type != "cpu":
        return False, f"device {device.type}: reduced precision not probed"
    cpu = cpu or CpuFeatures.detect()
    return cpu.native_bf16, cpu.describe()


def choose_precision(
    device: torch.device,
    requested: bool | None,
    probe: Probe | None,
    *,
    cpu: CpuFeatures | None = None,
    fp32_name: str = "fp32",
) -> Precision:
    """Pick the feature-extraction precision (see the module docstring).

    Args:
        device: Where the network runs.
        requested: True/False forces reduced precision/fp32; None decides automatically.
        probe: Times one forward pass at a dtype; None skips the timing (capability decides).
        cpu: The CPU's features (default: detected); tests pass fakes.
        fp32_name: How the timing names the fp32 side (``"fp32 (onnxruntime)"`` when the probe
            times fp32 on ONNX Runtime).
    """
    reduced = _reduced_dtype(device)
    if requested is not None:
        return (
            Precision(reduced, "--bf16 given")
            if requested
            else Precision("fp32", "--no-bf16 given")
        )
    native, hardware = _native(device, cpu)
    if not native:
        return Precision("fp32", f"{hardware}: {reduced} would be emulated, slower than fp32")
    if probe is None:
        return Precision(reduced, f"{hardware}: {reduced} runs natively")
    dtype = torch.bfloat16 if reduced == "bf16" else torch.float16
    probe(None), probe(dtype)  # warm-up: first calls pay for allocation and kernel selection
    fp32_times, reduced_times = [], []
    for _ in range(3):  # alternated, so a burst of load elsewhere hits both alike
        fp32_times.append(probe(None))
        reduced_times.append(probe(dtype))
    fp32_s, reduced_s = min(fp32_times), min(reduced_times)
    speedup = fp32_s / max(reduced_s, 1e-9)
    timing = f"{reduced} {reduced_s * 1e3:.0f} ms vs {fp32_name} {fp32_s * 1e3:.0f} ms per batch"
    if speedup >= MIN_SPEEDUP:
        return Precision(reduced, f"{hardware}; {timing} ({speedup:.1f}x)")
    return Precision("fp32", f"{hardware}, but {timing}: not {MIN_SPEEDUP}x faster")


def timed_forward(forward: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``forward`` takes on ``device`` (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    forward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
