"""The inference checkpoint directory: file modes and the strictness of config.json."""

import json
import os

import pytest
import torch

from t2v_model import DataGeometry, DiffusionConfig, ModelCard, TextEncoderInfo, Unet3D, UnetConfig
from t2v_model.checkpoint import CheckpointError, load_pretrained, save_pretrained


def save_tiny(path):
    torch.manual_seed(0)
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=16, attn_heads=2, attn_dim_head=8))
    card = ModelCard(diffusion=DiffusionConfig(timesteps=100), text_encoder=TextEncoderInfo(id="stub", dim=16),
                     data=DataGeometry(frames=3, height=8, width=10, fps=4))
    return save_pretrained(path, model, card)


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        ckpt = save_tiny(tmp_path / "ckpt")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in ckpt.iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644}  # safetensors alone would make 0600
    assert ckpt.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("drop", ["unet", "diffusion", "text_encoder", "data", "format"])
def test_a_card_missing_a_section_is_refused_by_name(tmp_path, drop):
    ckpt = save_tiny(tmp_path / "ckpt")
    card = json.loads((ckpt / "config.json").read_text())
    del card[drop]
    (ckpt / "config.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=rf"config.json: missing key '{drop}'"):
        load_pretrained(ckpt)


def test_an_empty_card_is_refused(tmp_path):
    ckpt = save_tiny(tmp_path / "ckpt")
    (ckpt / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"config.json: missing key 'unet'"):
        load_pretrained(ckpt)


def test_save_pretrained_refuses_to_replace_anything_but_a_checkpoint(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"mine: holds other files than a checkpoint \(notes.txt\)"):
        save_tiny(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "a_file").write_text("data")
    with pytest.raises(CheckpointError, match="a_file: exists and is not a directory"):
        save_tiny(tmp_path / "a_file")
    assert (tmp_path / "a_file").read_text() == "data"
    (tmp_path / "empty").mkdir()
    save_tiny(tmp_path / "empty")
    save_tiny(tmp_path / "empty")  # an earlier checkpoint is replaced
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("section, key, value, message", [
    ("diffusion", "timesteps", 10**12, r"diffusion.timesteps: at most 100000, got 1000000000000"),
    ("unet", "dim", 10**6, r"unet.dim: a U-Net of dim 1000000 with dim_mults \[1, 2\] would have ~558,000.7 G "
                           r"parameters \(at most 4 G\)"),
    ("unet", "dim_mults", [1] * 40, r"unet.dim_mults: at most 8 levels, got 40"),
    ("unet", "attn_heads", 10**7, r"unet.attn_heads: at most 256"),
    ("data", "frames", 10**9, r"data.frames x height x width: at most 134217728"),
    ("text_encoder", "max_length", 10**9, r"text_encoder.max_length: at most 4096, got 1000000000"),
])
def test_a_hostile_card_is_refused_before_anything_is_allocated(tmp_path, section, key, value, message):
    import time

    ckpt = save_tiny(tmp_path / "ckpt")
    card = json.loads((ckpt / "config.json").read_text())
    card[section][key] = value
    if key == "dim":  # keep the resnet_groups rule satisfied: only the size is hostile
        card[section]["resnet_groups"] = 8
    (ckpt / "config.json").write_text(json.dumps(card))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"config.json: {message}"):
        load_pretrained(ckpt)
    assert time.perf_counter() - start < 1.0


def test_weights_that_do_not_fit_the_card_are_refused_before_loading(tmp_path):
    ckpt = save_tiny(tmp_path / "ckpt")
    card = json.loads((ckpt / "config.json").read_text())
    card["unet"]["dim"] = 1024  # allowed, but not what the file holds: the shapes are compared from the header
    card["unet"]["dim_mults"] = [1, 2]
    (ckpt / "config.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"model.safetensors: shape mismatch for .*: file \(8,\) vs config "
                                              r"\(1024,\)"):
        load_pretrained(ckpt)


def test_per_level_blocks_and_patches_round_trip_through_the_card(tmp_path):
    torch.manual_seed(0)
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=16, attn_heads=2, attn_dim_head=8,
                              num_res_blocks=(1, 3), patch_size=2)).eval()
    card = ModelCard(diffusion=DiffusionConfig(timesteps=100), text_encoder=TextEncoderInfo(id="stub", dim=16),
                     data=DataGeometry(frames=3, height=8, width=10, fps=4))
    ckpt = save_pretrained(tmp_path / "ckpt", model, card)
    assert json.loads((ckpt / "config.json").read_text())["unet"]["num_res_blocks"] == [1, 3]
    loaded, loaded_card = load_pretrained(ckpt)
    assert loaded_card.unet.num_res_blocks == (1, 3) and loaded_card.unet.patch_size == 2
    x, t, text = torch.randn(1, 3, 3, 8, 10), torch.tensor([7]), torch.randn(1, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, text), model(x, t, text))
