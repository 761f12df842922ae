"""Process group setup for single-process and `torchrun` runs (gloo on CPU, nccl on GPU), and device choice."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from t2v_data.config import ConfigError


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
    A device this machine lacks is a ConfigError naming `key`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)  # the config's validate() has checked that it parses
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{key}: {name!r} requested but CUDA is not available")
        if (device.index or 0) >= count:
            raise ConfigError(f"{key}: {name!r} requested but this machine has {count} CUDA device(s)")
    return device


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
