"""Checkpoints on the Hugging Face Hub: a repo id resolves to its snapshot in the usual cache (downloaded once, or
found there offline), and a checkpoint is pushed as config.json + model.safetensors + a model card (README.md).

    pipe = TextToVideo.from_pretrained("someone/t2v-msrvtt")    # or a local directory
    pipe.push_to_hub("me/my-t2v-model")
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .config import ModelCard
from .errors import CheckpointError

OFFLINE_VARS = ("T2V_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")  # org/name, as the Hub spells them
FILES = ["config.json", "model.safetensors", "README.md"]


def offline() -> bool:
    """Whether downloads are off: T2V_OFFLINE, HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set to 1/true/yes/on."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_VARS)


def checkpoint_dir(name_or_dir: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local checkpoint directory: `name_or_dir` when it exists (or is no repo id: the loader names what is
    missing), else the snapshot of that Hub repo in the Hugging Face cache, downloaded first unless offline."""
    path = Path(name_or_dir).expanduser()
    if path.exists() or isinstance(name_or_dir, Path) or not REPO_ID.match(str(name_or_dir)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name_or_dir), revision=revision, cache_dir=cache_dir,
                                      allow_patterns=FILES, local_files_only=offline()))
    except Exception as e:  # noqa: BLE001 - hub errors are many types (HTTP, offline, missing repo or revision)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = "in the Hugging Face cache (downloads are off)" if offline() else "on the Hugging Face Hub"
        raise CheckpointError(f"{name_or_dir}: no such checkpoint directory, nor a checkpoint {where} ({first})") \
            from None


def model_card(card: ModelCard, repo_id: str) -> str:
    """The README.md pushed with a checkpoint: what it is and how to use it."""
    d, te = card.data, card.text_encoder
    return (f"---\nlibrary_name: t2v\ntags: [text-to-video, diffusion]\n---\n\n# {repo_id}\n\n"
            f"A t2v text-to-video diffusion model: {d.frames} frames of {d.height}x{d.width} at {d.fps:g} fps, "
            f"captions encoded by `{te.id}` ({te.dim}-d{', per-token' if te.tokens else ''}).\n\n"
            f"```python\nfrom t2v_model.pipeline import TextToVideo\nfrom t2v_model.video_io import save_video\n\n"
            f"pipe = TextToVideo.from_pretrained(\"{repo_id}\")\n"
            f"video = pipe.generate([\"a caption\"], steps=50, guidance=3.0, seed=0)\n"
            f"save_video(\"out.mp4\", video[0], fps=pipe.card.data.fps)\n```\n")


def push_to_hub(save, card: ModelCard, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload t2v model") -> str:
    """Create (or reuse) the model repo `repo_id` and upload the checkpoint `save(dir)` writes, with a model card.
    Returns the commit's URL."""
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="t2v-push-") as tmp:
        folder = Path(tmp) / "model"
        save(folder)
        (folder / "README.md").write_text(model_card(card, repo_id))
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message))
