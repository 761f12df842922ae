"""Training checkpoints: everything needed to continue a run exactly.

    <out_dir>/checkpoints/step-000500/
        model.safetensors  ema.safetensors     weights (training copy, EMA copy)
        optimizer.pt  scaler.pt                torch.save of plain state dicts, loaded with weights_only=True
        rng-rank0.pt  rng-rank1.pt ...         per-rank RNG states (torch, cuda, numpy, python, diffusion generator)
        state.json                             step, data position, config; written last

A checkpoint is assembled in `.step-000500.tmp/` and renamed into place, so a crash (even kill -9) mid-save leaves
the previous checkpoints untouched and the half-written one invisible. "Latest" is the highest step number.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE = "state.json"


class ResumeError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the file."""


@dataclass
class Checkpoint:
    path: Path
    step: int


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def list_checkpoints(root: str | Path) -> list[Checkpoint]:
    """Complete checkpoints under `root`, oldest first (by step number, not by name)."""
    root = Path(root)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = STEP_DIR.match(p.name)
            if m and (p / STATE).is_file():
                found.append(Checkpoint(p, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: str | Path) -> Checkpoint | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune(root: str | Path, keep: int) -> None:
    for ckpt in list_checkpoints(root)[:-keep]:
        shutil.rmtree(ckpt.path, ignore_errors=True)


def tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """This process's RNG states as a dict that `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))


def begin_save(root: Path, step: int) -> Path:
    """Rank 0: a fresh temporary directory for the checkpoint of `step` (stale ones from crashes are removed)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".step-{step:06d}.tmp"
    tmp.mkdir()
    return tmp


def save_rank_state(tmp: Path, rank: int, generator: torch.Generator) -> None:
    _torch_save(rng_state(generator), tmp / f"rng-rank{rank}.pt")


def finish_save(tmp: Path, root: Path, step: int, *, model, ema, optimizer, scaler, state: dict[str, Any],
                keep: int) -> Path:
    """Rank 0: write the shared files, state.json last, then rename the directory into place and prune."""
    save_file(tensors_of(model), str(tmp / "model.safetensors"))
    save_file(tensors_of(ema), str(tmp / "ema.safetensors"))
    _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
    _torch_save(scaler.state_dict() if scaler is not None else {}, tmp / "scaler.pt")
    with open(tmp / STATE, "w") as f:
        json.dump({"step": step, **state}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    final = step_dir(root, step)
    if final.exists():  # re-saving the same step (e.g. the final save right after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    prune(root, keep)
    return final


def load_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResumeError(f"{path / STATE}: unreadable ({e})") from None


def load_weights(path: Path, name: str, module: torch.nn.Module) -> None:
    file = path / name
    try:
        module.load_state_dict(load_file(str(file), device="cpu"))
    except Exception as e:  # noqa: BLE001 - corrupt file or architecture change; either way one clear line
        raise ResumeError(f"{file}: cannot load ({str(e).splitlines()[0]})") from None


def load_torch(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ResumeError(f"{file}: cannot load ({str(e).splitlines()[0]})") from None


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
