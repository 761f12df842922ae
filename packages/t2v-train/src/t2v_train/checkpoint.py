"""Training checkpoints: everything needed to continue a run exactly.

    <out_dir>/checkpoints/step-000500/
        model.safetensors  ema.safetensors     weights (training copy, EMA copy)
        optimizer.pt  scaler.pt                torch.save of plain state dicts, loaded with weights_only=True
        rng-rank0.pt  rng-rank1.pt ...         per-rank RNG states (torch, cuda, numpy, python, diffusion generator)
        state.json                             step, data position, config; written last

A checkpoint is assembled in `.step-000500.tmp/` and renamed into place, so a crash (even kill -9) mid-save leaves
the previous checkpoints untouched and the half-written one invisible. "Latest" is the highest step number.

A fresh run (train.resume=never) first moves the previous run's outputs into `<out_dir>/replaced-<UTC time>/`.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from t2v_model.checkpoint import save_safetensors
from t2v_model.errors import T2VError
from t2v_model.files import fsync_dir, named, replace_dir

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE = "state.json"
# what a training run (and the evaluate/generate stages after it) writes into out_dir: docs/FORMATS.md
RUN_OUTPUTS = ("checkpoints", "model", "samples", "metrics.jsonl", "tensorboard", "eval")


class ResumeError(T2VError):
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


def older_checkpoints_hint(root: Path, bad: Checkpoint) -> str:
    """What a user can do about an unloadable checkpoint `bad`: resume from an older one, or start fresh."""
    older = [c.path.name for c in reversed(list_checkpoints(root)) if c.step < bad.step]
    fresh = "start over with --fresh (train.resume=never)"
    if not older:
        return f"no older checkpoint in {root}; {fresh}"
    return (f"older checkpoints: {', '.join(older)} (move {bad.path.name} out of {root} to resume from "
            f"{older[0]}); or {fresh}")


def set_aside(out_dir: Path) -> tuple[Path, list[str]] | None:
    """Move the outputs of a previous run in `out_dir` into a new `out_dir/replaced-<UTC time>/`, so that a fresh
    run neither mixes with nor destroys them. Returns that folder and the names moved, or None if there were none."""
    names = [n for n in RUN_OUTPUTS if _has_data(out_dir / n)]
    if not names:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside, n = out_dir / f"replaced-{stamp}", 1
    while True:
        try:
            aside.mkdir()
            break
        except FileExistsError:  # two fresh runs within a second
            n += 1
            aside = out_dir / f"replaced-{stamp}-{n}"
    for name in names:
        os.replace(out_dir / name, aside / name)
    fsync_dir(out_dir)
    return aside, names


def _has_data(path: Path) -> bool:
    """Not worth setting aside: a missing or empty file or folder (e.g. the metrics.jsonl of a run that failed)."""
    return any(path.iterdir()) if path.is_dir() else path.is_file() and path.stat().st_size > 0


def prune(root: str | Path, keep: int) -> None:
    for ckpt in list_checkpoints(root)[:-keep]:
        _remove_dir(ckpt.path)


def _remove_dir(path: Path) -> None:
    """Rename out of the checkpoint names first, so that a crash mid-delete never leaves a half-deleted checkpoint
    that still counts as one (what is left is removed by the next begin_save)."""
    gone = path.with_name(f".{path.name}.removed.tmp")
    shutil.rmtree(gone, ignore_errors=True)  # a leftover of an earlier crash: os.replace needs the name free
    try:
        os.replace(path, gone)
    except OSError:  # e.g. the leftover could not be removed (NFS): delete in place, as a best effort
        gone = path
    shutil.rmtree(gone, ignore_errors=True)


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
    """Rank 0: write the shared files, state.json last, then rename the directory into place and prune. A failed
    write (a full disk) is an OSError naming the file; the older checkpoints are untouched, and the half-written
    one is removed at the next start."""
    for name, module in (("model.safetensors", model), ("ema.safetensors", ema)):
        save_safetensors(tensors_of(module), tmp / name)
    _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
    _torch_save(scaler.state_dict() if scaler is not None else {}, tmp / "scaler.pt")
    try:
        with open(tmp / STATE, "w") as f:
            json.dump({"step": step, **state}, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise named(e, tmp / STATE)
    final = step_dir(root, step)
    replace_dir(tmp, final)  # re-saving a step (the final save right after a periodic one): the old copy stays whole
    prune(root, keep)
    return final


def load_state(path: Path) -> dict[str, Any]:
    file = path / STATE
    try:
        state = json.loads(file.read_text())
    except OSError as e:
        raise ResumeError(f"{file}: unreadable ({e.strerror})") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise ResumeError(f"{file}: corrupt (not valid JSON)") from None
    if not isinstance(state, dict) or type(state.get("step")) is not int:
        raise ResumeError(f"{file}: corrupt (no integer step)")
    return state


def load_weights(path: Path, name: str, module: torch.nn.Module) -> None:
    file = path / name
    try:
        tensors = load_file(str(file), device="cpu")
    except (OSError, SafetensorError) as e:
        raise ResumeError(f"{file}: {_unreadable(e, 'safetensors')}") from None
    try:
        module.load_state_dict(tensors)
    except RuntimeError as e:
        raise ResumeError(f"{file}: does not fit the model ({str(e).splitlines()[0]})") from None


def load_torch(file: Path) -> Any:
    """A file written by `_torch_save`. torch's own message is not relayed: for a damaged file it suggests
    weights_only=False, i.e. executing whatever the file contains."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read back a file we wrote means it is damaged
        raise ResumeError(f"{file}: {_unreadable(e, 'torch.save')}") from None


def load_torch_into(file: Path, load: Callable[[Any], Any]) -> None:
    """Hand the contents of `file` to `load` (e.g. optimizer.load_state_dict); one clear line if either fails."""
    state = load_torch(file)
    try:
        load(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:  # readable, but not what we wrote
        raise ResumeError(f"{file}: corrupt or from another model ({type(e).__name__})") from None


def _unreadable(e: Exception, kind: str) -> str:
    if isinstance(e, FileNotFoundError):
        return "missing"
    if isinstance(e, OSError):
        return f"unreadable ({e.strerror})"
    return f"corrupt (not a complete {kind} file)"


def _torch_save(obj: Any, path: Path) -> None:
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise named(e, path)
    except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
        raise OSError(errno.EIO, f"cannot write ({str(e).splitlines()[0]})", str(path)) from None
