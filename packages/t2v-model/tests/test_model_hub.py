"""Checkpoints on the Hugging Face Hub, offline: a repo id loads from its snapshot in the cache, a missing one is
one line, and push_to_hub uploads the checkpoint with a model card (the Hub client is a stub recording the calls)."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from t2v_model import DataGeometry, DiffusionConfig, ModelCard, TextEncoderInfo, Unet3D, UnetConfig
from t2v_model.checkpoint import CheckpointError
from t2v_model.pipeline import TextToVideo

DIM = 16


class StubEncoder:
    id, dim = "stub", DIM

    def encode(self, texts, tokens=False, token_layer=-1):
        rows = [torch.randn(DIM, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts]
        return SimpleNamespace(pooled=torch.stack(rows), tokens=None, mask=None)


def tiny_pipe() -> TextToVideo:
    torch.manual_seed(0)
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=DIM, attn_heads=2, attn_dim_head=8))
    card = ModelCard(diffusion=DiffusionConfig(timesteps=50), text_encoder=TextEncoderInfo(id="stub", dim=DIM),
                     data=DataGeometry(frames=3, height=8, width=8, fps=4))
    return TextToVideo(model, card, device="cpu", text_encoder=StubEncoder())


def cached_repo(cache: Path, repo_id: str, checkpoint: Path) -> None:
    """The layout huggingface_hub keeps a downloaded repo in: models--org--name/{refs/main, snapshots/<commit>/}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(checkpoint, repo / "snapshots" / commit)


def test_a_hub_repo_id_loads_from_the_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = tiny_pipe()
    pipe.save_pretrained(tmp_path / "ckpt")
    cached_repo(tmp_path / "cache", "someone/t2v-tiny", tmp_path / "ckpt")
    loaded = TextToVideo.from_pretrained("someone/t2v-tiny", cache_dir=tmp_path / "cache", text_encoder=StubEncoder())
    assert loaded.device.type == "cpu"  # "auto" on a machine without CUDA or MPS
    a = pipe.generate(["a red ball"], steps=3, seed=1)
    assert torch.equal(a, loaded.generate(["a red ball"], steps=3, seed=1))
    with pytest.raises(CheckpointError, match=r"^someone/missing: no such checkpoint directory, nor a checkpoint in "
                                              r"the Hugging Face cache \(downloads are off\)"):
        TextToVideo.from_pretrained("someone/missing", cache_dir=tmp_path / "cache")
    with pytest.raises(CheckpointError, match=r"runs/nowhere/model: checkpoint directory not found"):
        TextToVideo.from_pretrained("runs/nowhere/model")  # not a repo id: a missing local directory


def test_push_to_hub_uploads_the_checkpoint_and_a_model_card(tmp_path, monkeypatch):
    import huggingface_hub

    calls, uploaded = [], {}

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("api", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload_folder", repo_id, commit_message))
            uploaded.update({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = tiny_pipe().push_to_hub("me/t2v-tiny", private=True, token="hf_x")
    assert url == "https://huggingface.co/me/t2v-tiny/commit/abc"
    assert calls == [("api", "hf_x"), ("create_repo", "me/t2v-tiny", True, True),
                     ("upload_folder", "me/t2v-tiny", "Upload t2v model")]
    assert sorted(uploaded) == ["README.md", "config.json", "model.safetensors"]
    card = uploaded["README.md"].decode()
    assert "3 frames of 8x8 at 4 fps" in card and 'TextToVideo.from_pretrained("me/t2v-tiny")' in card
    # what was uploaded loads back
    folder = tmp_path / "back"
    folder.mkdir()
    for name, data in uploaded.items():
        (folder / name).write_bytes(data)
    TextToVideo.from_pretrained(folder, text_encoder=StubEncoder())
