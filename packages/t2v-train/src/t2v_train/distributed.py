"""Process group setup for single-process and `torchrun` runs (gloo on CPU, nccl on GPU), and device choice."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from t2v_model.errors import ConfigError, TrainingError
from t2v_model.pipeline import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value


def pick_device(name: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """"auto" -> cuda:LOCAL_RANK when CUDA is available, else cpu; "cuda" under torchrun -> cuda:LOCAL_RANK.
    A device this machine lacks is a ConfigError naming `key` (t2v_model.pipeline.resolve_device's checks)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        return resolve_device(name)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(), pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank), device


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def lost_peer(e: RuntimeError) -> bool:
    """Under torchrun: a collective failed because another rank exited (gloo raises a plain RuntimeError)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    lost = ("Connection closed by peer", "Connection reset by peer")
    return distributed and (isinstance(e, dist.DistError) or any(text in str(e) for text in lost))


def peer_failed() -> TrainingError:
    # the rank that failed has printed why; this one only lost the connection to it
    return TrainingError(f"rank {os.environ.get('RANK', '?')}: stopped because another rank failed (see its error)")
