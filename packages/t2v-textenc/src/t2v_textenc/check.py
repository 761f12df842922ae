"""The trainer's guard: refuse pre-embedded shards made by another text encoder than the model expects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .shards import MANIFEST


class EncoderMismatchError(ValueError):
    """Shards embedded with a different text encoder (or not embedded at all); names both sides."""


def check_encoder(manifest_or_dir: dict[str, Any] | str | Path, expected_id: str, expected_dim: int) -> dict[str, Any]:
    """Return the manifest's `text_encoder` block if its id and dim match, else raise EncoderMismatchError."""
    if isinstance(manifest_or_dir, dict):
        manifest, where = manifest_or_dir, "manifest"
    else:
        path = Path(manifest_or_dir)
        if path.is_dir():
            path = path / MANIFEST
        if not path.is_file():
            raise EncoderMismatchError(f"{path}: no manifest; run pipelines/embed.py to make pre-embedded shards")
        where = str(path)
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EncoderMismatchError(f"{path}: not valid JSON ({e})") from None
    info = manifest.get("text_encoder") if isinstance(manifest, dict) else None
    if not isinstance(info, dict) or "id" not in info or "dim" not in info:
        stage = manifest.get("stage") if isinstance(manifest, dict) else None
        raise EncoderMismatchError(
            f"{where}: no text_encoder block (stage {stage!r}); these are not pre-embedded shards, "
            f"run pipelines/embed.py first"
        )
    if info["id"] == expected_id and info["dim"] != expected_dim:  # re-embedding with it would give the same width
        raise EncoderMismatchError(
            f"{where}: shards were embedded with text encoder {info['id']!r} ({info['dim']}-d) but the model expects "
            f"{expected_dim}-d; set model.unet.cond_dim={info['dim']}, or embed with a {expected_dim}-d encoder"
        )
    if info["id"] != expected_id:
        raise EncoderMismatchError(
            f"{where}: shards were embedded with text encoder {info['id']!r} ({info['dim']}-d) but the config names "
            f"{expected_id!r} (embed.encoder) with model.unet.cond_dim {expected_dim}; re-run the embed stage, or set "
            f"embed.encoder to {info['id']!r}"
        )
    return info
