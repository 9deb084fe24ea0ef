"""``imgclf train --nproc N``: N training processes started by PyTorch's elastic launcher.

``--nproc N`` runs the same command line N times under ``torch.distributed.run`` (what
``torchrun --standalone --nproc-per-node N -m imgclf ...`` does), which starts the processes with
their ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment and a local rendezvous, stops them all
when one fails, and returns when every one has finished. Each process sees the launcher's
environment and trains with :mod:`imgclf.training.distributed`. Several machines use ``torchrun``
itself with its rendezvous flags (docs/deployment.md, "Training on several processes").

Each process gets an equal share of the CPUs this process may use
(:func:`imgclf.inference.cpus.available_cpus`: cgroup quota, affinity): ``N x threads`` never
exceeds them, and an explicit ``--threads`` that would is refused. Bad ``--nproc`` values are
refused before anything starts, with one line and exit status 2 like every other bad option.

This module imports torch only when it launches, so ``imgclf train --help`` stays cheap.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from imgclf.errors import ConfigError
from imgclf.inference.cpus import available_cpus

log = logging.getLogger(__name__)

#: Environment variables torchrun sets in every process it starts.
LAUNCHED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def launched() -> bool:
    """Whether this process was started by torchrun (``--nproc`` or ``torchrun`` itself)."""
    return all(name in os.environ for name in LAUNCHED_VARIABLES)


def process_rank() -> int:
    """This process's global rank: 0 when it was not launched as one of several."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def threads_per_process(processes: int, cpus: int | None = None) -> int:
    """Torch threads for each of ``processes`` processes on one machine: an equal CPU share."""
    cpus = available_cpus().cpus if cpus is None else cpus
    return max(1, cpus // max(1, processes))


def check_processes(
    nproc: int,
    *,
    threads: int | None,
    batch_size: int,
    gpus: int,
    cpus: int,
) -> int:
    """Validate ``--nproc`` against the machine and the batch; return each process's threads.

    Raises:
        ConfigError: Fewer than one process, more processes than GPUs (or, without GPUs, than
            CPUs), ``nproc x threads`` above the CPUs, or a per-process batch under two images.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if gpus and nproc > gpus:
        raise ConfigError(f"--nproc {nproc}: this machine has {gpus} GPU(s), one per process")
    if not gpus and nproc > cpus:
        raise ConfigError(
            f"--nproc {nproc}: only {cpus} CPU(s) are available here; each process needs one"
        )
    per_process = threads or threads_per_process(nproc, cpus)
    if not gpus and nproc * per_process > cpus:
        raise ConfigError(
            f"--nproc {nproc} x --threads {per_process} = {nproc * per_process} threads on "
            f"{cpus} available CPU(s); use --threads {max(1, cpus // nproc)} or leave it out"
        )
    if batch_size // nproc < 2:
        raise ConfigError(
            f"--batch-size {batch_size} over {nproc} processes leaves {batch_size // nproc} "
            f"image(s) per process; batch norm needs 2: use --batch-size {2 * nproc} or more"
        )
    return per_process


@contextmanager
def _quiet_launcher(verbose: bool) -> Iterator[None]:
    """Keep torch's launcher logs (rendezvous, 'closing signal', failure reports) off stderr.

    The processes print their own results and their one-line errors; ``-v`` shows the rest.
    """
    if verbose:
        yield
        return
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def launch(
    argv: Sequence[str],
    nproc: int,
    *,
    threads: int | None,
    batch_size: int,
    verbose: bool = False,
) -> int:
    """Run ``python -m imgclf ARGV`` in ``nproc`` processes; return the command's exit status.

    Args:
        argv: The command line after ``imgclf`` (global options included); the processes see
            ``--nproc`` too and, being launched, train instead of launching again.
        nproc: Processes on this machine.
        threads: Torch threads for each (None: an equal share of the available CPUs).
        batch_size: The run's batch size, split across the processes.
        verbose: Also show torch's launcher logs.

    Returns:
        0 when every process succeeded; else the exit status of the first that failed (128 +
        the signal number for one killed by a signal, or when the launcher itself was stopped
        by SIGTERM or SIGINT: it stops the processes first).
    """
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus = available_cpus().cpus
    per_process = check_processes(
        nproc, threads=threads, batch_size=batch_size, gpus=gpus, cpus=cpus
    )
    options = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "--module", "--", "imgclf", *argv]
    )
    log.info("launching %d processes x %d thread(s)", nproc, per_process)
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(per_process)  # inherited by the processes
    try:
        with _quiet_launcher(verbose):
            run(options)  # type: ignore[no-untyped-call]
    except SignalException as exc:  # SIGTERM/SIGINT to the launcher: it stopped the processes
        print(f"interrupted ({exc.sigval.name})", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode > 0:
            return failure.exitcode  # the process printed its own one-line error
        number = -failure.exitcode
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        print(
            f"imgclf train: error: the training process of rank {rank} was killed by {name}",
            file=sys.stderr,
        )
        return 128 + number
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    return 0
