"""Several training processes under ``torchrun`` (PyTorch DDP): this process's place in the run,
its process groups, and how the ranks wait for one another's single-rank work and learn of one
another's failures. :func:`voxmetric.training.train` is the only user; one process (world 1)
needs none of it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from .errors import VoxMetricError


@dataclass(frozen=True)
class Dist:
    """This process's place in a DDP run; ``ctrl``: the gloo control group in which ranks wait
    for one another's single-rank work (rank 0 preparing the cases, validating) and agree on
    failures, with a timeout long enough for that work (:func:`together`)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    ctrl: Any = field(default=None, compare=False)

    @property
    def main(self) -> bool:
        return self.rank == 0


#: How long a process may wait in the control group for another's single-rank work (seconds).
DDP_WAIT_S = float(os.environ.get("VOXMETRIC_DDP_WAIT_S", str(24 * 3600)))
_FAILURE_KEY = "voxmetric/failure"


def together(dist: Dist, work: Callable[[], Any] | None) -> Any:
    """Run ``work`` (None: nothing) on this rank, then let every rank know whether any failed:
    the failing rank re-raises its own exception, every other one a VoxMetricError with its
    message. Under DDP every rank must call this at the same point; ranks without work wait in
    the control group (:data:`DDP_WAIT_S`), not in a training collective that would time out."""
    error: BaseException | None = None
    result = None
    try:
        result = work() if work is not None else None
    except Exception as exc:  # shared with the other ranks below, then re-raised
        error = exc
    if dist.world > 1:
        said: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(said, None if error is None else str(error), group=dist.ctrl)
        failed = [(r, m) for r, m in enumerate(said) if m is not None]
        if failed and error is None:
            r, message = failed[0]
            raise VoxMetricError(f"Training process {r} of {dist.world} failed: {message}")
    if error is not None:
        raise error
    return result


def _store() -> Any:
    """The DDP rendezvous store (None when there is none)."""
    try:
        return torch.distributed.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001  (no default group, or a torch without it)
        return None


def publish_failure(dist: Dist, exc: BaseException) -> None:
    """Leave this rank's error in the rendezvous store for ranks a broken collective stops."""
    store = _store()
    if store is not None:
        try:
            store.set(_FAILURE_KEY, f"{dist.rank}\n{(str(exc).strip() or type(exc).__name__)[:2000]}")
        except Exception:  # noqa: BLE001  (best effort: the store may be gone with rank 0)
            pass


def peer_failure(dist: Dist, exc: BaseException) -> VoxMetricError | None:
    """For a collective broken because another rank died: a VoxMetricError carrying that rank's
    message from the store (or saying to look for it in its output); None for other errors."""
    text = str(exc)
    broken = isinstance(exc, torch.distributed.DistError) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Timed out waiting"))
    if dist.world <= 1 or not broken:
        return None
    store = _store()
    try:
        if store is not None:
            store.set_timeout(timedelta(seconds=5))
            rank, message = store.get(_FAILURE_KEY).decode("utf-8").split("\n", 1)
            if int(rank) != dist.rank:
                return VoxMetricError(f"Training process {rank} of {dist.world} failed: {message}")
    except Exception:  # noqa: BLE001
        pass
    return VoxMetricError(f"Another training process stopped ({(text.strip().splitlines() or [''])[0][:200]}); "
                          "its own message is in its output above. This process stopped too.")


def from_env() -> Dist:
    """Rank/world from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))



@contextmanager
def joined(dist: Dist, device: torch.device) -> Iterator[tuple[Dist, torch.device]]:
    """(``dist`` with its control group, this rank's device) for the duration of a run. Under
    DDP a CUDA device becomes ``cuda:LOCAL_RANK``; the default process group (NCCL on CUDA, gloo
    on the CPU) is created unless the caller made one, and both groups are destroyed on exit."""
    if dist.world <= 1:
        yield dist, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    own_group = not torch.distributed.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    dist = dataclasses.replace(dist, ctrl=torch.distributed.new_group(backend="gloo",
                                                                      timeout=timedelta(seconds=DDP_WAIT_S)))
    try:
        yield dist, device
    finally:
        torch.distributed.destroy_process_group(dist.ctrl)
        if own_group:
            torch.distributed.destroy_process_group()
