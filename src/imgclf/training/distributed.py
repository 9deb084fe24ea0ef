"""Multi-process training: the process group and the few collectives ``train`` needs.

A run started by ``imgclf train --nproc N`` or ``torchrun`` (:mod:`imgclf.training.launch`) has
one process per rank, each reading the whole dataset (decoding is per process), and:

* **head stage**: rank 0 times and chooses the feature precision (a timing, which every rank
  could answer differently) and every rank uses its choice; rank ``r`` of ``W`` embeds images
  ``r, r + W, r + 2W, ...`` of each split;
  :func:`gather_rows` puts the features back in dataset order on every rank, and every rank fits
  the same head on them (deterministic: the same features, seed and thread count);
* **fine-tuning**: the model is wrapped in ``DistributedDataParallel`` (gloo on CPUs, NCCL on
  GPUs, one GPU per process); :func:`rank_batches` draws each epoch's order with a
  ``DistributedSampler`` and splits the run's ``batch_size`` across the ranks, so one optimiser
  step sees ``batch_size`` images, as in one process, and the learning-rate schedule is the same;
  validation is sharded like the head stage, so every rank takes the same early-stopping
  decisions;
* **rank 0 alone** writes checkpoints (with every rank's random-number state, gathered), the
  bundle, the report and the exports; on ``resume`` it reads the checkpoint and broadcasts it, so
  only rank 0 needs the output folder.

With one process (``world_size == 1``) every function here is a no-op or the identity, and
``train`` runs exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from imgclf.training.images import Pixels
from imgclf.training.launch import launched, threads_per_process

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """Where this process stands in a run: its ranks and the run's size."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        """Whether the run has more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and reports."""
        return self.rank == 0


SINGLE = Processes()


def from_env() -> Processes:
    """This process's place, from torchrun's environment (one process when not launched)."""
    if not launched():
        return SINGLE
    return Processes(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        local_world_size=int(os.environ["LOCAL_WORLD_SIZE"]),
    )


def start(procs: Processes, threads: int | None) -> torch.device | None:
    """Set the torch threads; with several processes, join the process group too.

    ``threads`` None keeps torch's default in one process and gives each of a machine's several
    processes an equal share of its CPUs. Returns this rank's device (gloo on CPUs; NCCL on GPUs,
    one per process), or None in one process (the trainer picks its device as always).
    """
    if threads is None and procs.enabled:
        threads = threads_per_process(procs.local_world_size)
    if threads:
        torch.set_num_threads(threads)
    if not procs.enabled:
        return None
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", procs.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return device


def finish(procs: Processes) -> None:
    """Leave the process group."""
    if procs.enabled and dist.is_initialized():
        dist.destroy_process_group()


Rows = TypeVar("Rows", np.ndarray, Pixels)


def shard(rows: Rows, procs: Processes) -> Rows:
    """This rank's rows: ``rank, rank + W, rank + 2W, ...`` (all of them in one process).

    A view either way: :class:`~imgclf.training.images.Pixels` are not read here.
    """
    if not procs.enabled:
        return rows
    every = slice(procs.rank, None, procs.world_size)
    return rows.subset(every) if isinstance(rows, Pixels) else rows[every]


def gather_rows(local: torch.Tensor, total: int, procs: Processes) -> torch.Tensor:
    """Every rank's :func:`shard` results, in the original row order, on every rank (CPU).

    ``local`` holds this rank's rows of a ``total``-row array; shards differ by at most one row,
    so each is padded to the longest for ``all_gather`` and the padding dropped after.
    """
    if not procs.enabled:
        return local
    # A rank with no rows (fewer rows than ranks) cannot know their shape: take another's.
    described = (tuple(local.shape[1:]), local.dtype) if len(local) else None
    shape, dtype = next(d for d in gather_objects(described, procs) if d is not None)
    longest = -(-total // procs.world_size)
    device = _collective_device()
    padded = torch.zeros((longest, *shape), dtype=dtype, device=device)
    if len(local):
        padded[: len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(procs.world_size)]
    dist.all_gather(parts, padded)
    # Row i of rank r is row i * W + r of the whole: interleave, then drop the padding.
    stacked = torch.stack(parts, dim=1).reshape(longest * procs.world_size, *shape)
    return stacked[:total].cpu()


def all_sum(values: list[float], procs: Processes) -> list[float]:
    """Element-wise sums of ``values`` over the ranks."""
    if not procs.enabled:
        return values
    summed = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(summed)
    return [float(v) for v in summed.cpu()]


def gather_objects(value: T, procs: Processes) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not procs.enabled:
        return [value]
    gathered: list[Any] = [None] * procs.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast(value: T, procs: Processes) -> T:
    """Rank 0's ``value`` (picklable) on every rank."""
    if not procs.enabled:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def rank_batches(
    total: int, batch_size: int, seed: int, epoch: int, procs: Processes
) -> list[np.ndarray]:
    """This rank's image indices for one epoch, in per-rank batches of ``batch_size // W``.

    A ``DistributedSampler`` shuffles with ``seed`` and ``epoch`` (the same order on every rank)
    and gives each rank an equal share, so every rank takes the same number of steps; a last
    batch of one image is dropped on every rank alike (batch norm cannot train on one).
    """
    from torch.utils.data import DistributedSampler

    indices: Any = range(total)  # a sized sequence is all the sampler reads
    sampler: DistributedSampler[int] = DistributedSampler(
        indices, num_replicas=procs.world_size, rank=procs.rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))
    size = max(1, batch_size // procs.world_size)
    end = len(order) - (1 if len(order) % size == 1 else 0)
    return [order[start : start + size] for start in range(0, end, size)]


def wrap(model: torch.nn.Module, device: torch.device, procs: Processes) -> torch.nn.Module:
    """``model`` under ``DistributedDataParallel`` (rank 0's weights on every rank), or itself."""
    if not procs.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _collective_device() -> torch.device:
    """Where tensors for collectives live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
