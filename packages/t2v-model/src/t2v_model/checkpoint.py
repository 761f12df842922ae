"""The inference checkpoint format: a directory with `model.safetensors` (weights) and `config.json` (ModelCard).

Written to a temporary sibling directory and renamed into place, so a crash never leaves a half-written checkpoint
where a good one was.
"""

from __future__ import annotations

import dataclasses
import errno
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import ModelCard
from .errors import CheckpointError, ConfigError
from .files import TEMP_SUFFIX, AtomicFile, json_bytes, keep_umask_mode, load_json, replace_dir
from .schema import build, to_dict
from .unet import Unet3D

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_pretrained(directory: str | Path, model: Unet3D, card: ModelCard, step: int | None = None) -> Path:
    """Save `model`'s weights (pass the EMA model for inference) and `card` atomically into `directory`, which must
    be new, empty, or an earlier checkpoint (replaced whole); anything else there is refused, not deleted.
    `card.unet` is set to `model.config`: the weights define the architecture. `step`: the training step the
    weights are from, kept in the weights file's metadata (`exported_step`)."""
    directory = Path(directory)
    if not directory.name:
        raise CheckpointError(f"{str(directory)!r}: not a directory name to save a checkpoint to")
    if directory.exists():
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: exists and is not a directory; save the checkpoint elsewhere")
        others = sorted(p.name for p in directory.iterdir() if p.name not in (WEIGHTS, CONFIG, "README.md"))
        if others:
            raise CheckpointError(f"{directory}: holds other files than a checkpoint ({', '.join(others[:3])}); "
                                  f"save to a new or empty directory")
    card.unet = model.config
    card.validate()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=TEMP_SUFFIX, dir=directory.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        metadata = {"format": card.format, **({"step": str(step)} if step is not None else {})}
        save_safetensors(state, tmp / WEIGHTS, metadata=metadata)
        with AtomicFile(tmp / CONFIG) as f:
            f.file.write(json_bytes(to_dict(card)))
        keep_umask_mode(tmp, directory=True)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, atomically and fsynced, with the umask's file mode (it makes owner-only files). A
    failed write (a full disk: safetensors raises its own error) is an OSError naming `path`."""
    with AtomicFile(path) as f:
        try:
            save_file(tensors, str(f.tmp), metadata=metadata)
        except SafetensorError as e:
            raise OSError(errno.EIO, f"cannot write ({e})", str(path)) from None


def exported_step(directory: str | Path) -> int | None:
    """The training step an exported checkpoint's weights are from (None: unknown, or no readable checkpoint)."""
    try:
        with safe_open(str(Path(directory) / WEIGHTS), "pt") as f:
            return int((f.metadata() or {}).get("step", ""))
    except (OSError, SafetensorError, ValueError):
        return None


def load_card(directory: str | Path) -> ModelCard:
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    data = load_json(path, CheckpointError, "missing (not a t2v-model checkpoint directory?)")
    # every section is required: a card with one missing would silently describe a default model
    missing = [f.name for f in dataclasses.fields(ModelCard) if isinstance(data, dict) and f.name not in data]
    if missing:
        raise CheckpointError(f"{path}: missing key {missing[0]!r} (a t2v-model card has "
                              f"{', '.join(f.name for f in dataclasses.fields(ModelCard))})")
    try:
        return build(ModelCard, data)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Unet3D, ModelCard]:
    """Load a checkpoint saved by `save_pretrained`: returns the Unet3D (eval mode) and its ModelCard."""
    directory = Path(directory)
    card = load_card(directory)
    path = directory / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    # the shapes are compared before anything is allocated: the model on the meta device, the file's header
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Unet3D(card.unet).state_dict().items()}
    try:
        with safe_open(str(path), "pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from None
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CheckpointError(
            f"{path}: weights do not match config.json ({len(missing)} missing, {len(unexpected)} unexpected; {what})"
        )
    for name, shape in stored.items():
        if shape != expected[name]:
            raise CheckpointError(f"{path}: shape mismatch for {name}: file {shape} vs config {expected[name]}")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from None
    model = Unet3D(card.unet)
    model.load_state_dict(state)
    return model.to(device).eval(), card
