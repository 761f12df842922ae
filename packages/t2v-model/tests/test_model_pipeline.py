import json
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from t2v_model import DataGeometry, DiffusionConfig, ModelCard, TextEncoderInfo, Unet3D, UnetConfig
from t2v_model.checkpoint import CheckpointError, load_pretrained, save_pretrained
from t2v_model.pipeline import TextToVideo, resolve_device
from t2v_model.samplers import guided_denoiser
from t2v_model.video_io import contact_sheet, save_grid, save_video

DIM = 16


class StubEncoder:
    """A deterministic stand-in for the BERT wrapper (same interface), so these tests stay fast and offline."""

    id, dim = "stub", DIM

    def __init__(self):
        self.calls = 0

    def encode(self, texts, tokens=False, token_layer=-1):
        self.calls += 1
        rows = [torch.randn(DIM, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts]
        return SimpleNamespace(pooled=torch.stack(rows), tokens=None, mask=None)


def make_pipe(tmp_path=None):
    torch.manual_seed(0)
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=DIM, attn_heads=2, attn_dim_head=8))
    card = ModelCard(
        diffusion=DiffusionConfig(timesteps=100),
        text_encoder=TextEncoderInfo(id="stub", dim=DIM),
        data=DataGeometry(frames=3, height=8, width=10, fps=4),
    )
    return TextToVideo(model, card, text_encoder=StubEncoder())


def test_generate_shape_dtype_and_seed_control():
    pipe = make_pipe()
    a = pipe.generate(["a red circle moving left", "a blue square"], steps=4, guidance=2.0, seed=7)
    assert a.shape == (2, 3, 8, 10, 3) and a.dtype == torch.uint8
    b = pipe.generate(["a red circle moving left", "a blue square"], steps=4, guidance=2.0, seed=7)
    assert torch.equal(a, b)
    c = pipe.generate(["a red circle moving left", "a blue square"], steps=4, guidance=2.0, seed=8)
    assert not torch.equal(a, c)
    ddpm = pipe.generate(["x"], steps=5, sampler="ddpm", seed=0)
    assert ddpm.shape == (1, 3, 8, 10, 3)
    dpm = pipe.generate(["x", "y"], steps=5, sampler="dpm++", seed=0)
    assert dpm.shape == (2, 3, 8, 10, 3) and torch.equal(dpm, pipe.generate(["x", "y"], steps=5, sampler="dpm++"))
    assert not torch.equal(dpm[:1], pipe.generate(["x"], steps=5, seed=0))  # not DDIM under another name
    with pytest.raises(ValueError, match="prompts"):
        pipe.generate([""])
    with pytest.raises(ValueError, match=r"sampler: unknown 'euler' \(ddim \| ddpm \| dpm\+\+\)"):
        pipe.generate(["x"], sampler="euler")


@pytest.mark.parametrize("kwargs, match", [
    ({"guidance": float("nan")}, "guidance: must be a finite"), ({"guidance": float("inf")}, "guidance"),
    ({"eta": -1.0}, "eta: must be in"), ({"eta": 5.0}, "eta"), ({"steps": 0}, r"steps: must be in \[1, 100\]"),
    ({"steps": 0, "sampler": "ddpm"}, "steps"), ({"steps": 101}, "steps"), ({"sampler": "euler"}, "sampler"),
])
def test_bad_sampling_settings_are_refused_before_encoding(kwargs, match):
    pipe = make_pipe()
    with pytest.raises(ValueError, match=match):
        pipe.generate(["x"], **{"steps": 2, **kwargs})
    assert pipe.text_encoder.calls == 0
    with pytest.raises(ValueError, match=match):
        pipe.generate_from_embeddings(torch.zeros(1, DIM), **{"steps": 2, **kwargs})


def test_devices_are_checked_before_the_weights(tmp_path):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, match in [("tpu", "device tpu: unknown"), ("cuda:x", "unknown"), ("meta", "unknown"),
                       ("cuda:99", "device cuda:99: ")]:
        with pytest.raises(ValueError, match=match):
            resolve_device(bad)
    ckpt = make_pipe().save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="device tpu"):  # not a CheckpointError blaming the weights
        TextToVideo.from_pretrained(ckpt, device="tpu", text_encoder=StubEncoder())


def test_save_load_generate_round_trip_is_bit_identical(tmp_path):
    pipe = make_pipe()
    before = pipe.generate(["a green star growing"], steps=5, guidance=3.0, seed=3)
    pipe.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = TextToVideo.from_pretrained(tmp_path / "ckpt", text_encoder=StubEncoder())
    after = loaded.generate(["a green star growing"], steps=5, guidance=3.0, seed=3)
    assert torch.equal(before, after)
    assert loaded.card == pipe.card


def test_guidance_one_equals_the_conditional_output_and_cfg_is_batched():
    pipe = make_pipe()
    model = pipe.model
    x = torch.randn(2, 3, 3, 8, 10)
    t = torch.tensor([10, 60])
    text = torch.randn(2, DIM)
    with torch.no_grad():
        cond = model(x, t, text)
        uncond = model(x, t, text, drop_text=torch.ones(2, dtype=torch.bool))
        assert torch.allclose(guided_denoiser(model, text, guidance=1.0)(x, t), cond)
        # the batched path: w=0 gives the unconditional branch, w=2 gives 2c-u; their mean is c (= w=1)
        w0 = guided_denoiser(model, text, guidance=0.0)(x, t)
        w2 = guided_denoiser(model, text, guidance=2.0)(x, t)
        assert torch.allclose(w0, uncond, atol=1e-5)
        assert torch.allclose((w0 + w2) / 2, cond, atol=1e-5)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        guided_denoiser(model, text, guidance=3.0)(x, t)
    assert calls == [4]  # ONE forward with cond + uncond rows


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(tmp_path / "nope")
    pipe = make_pipe()
    ckpt = pipe.save_pretrained(tmp_path / "ckpt")
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_pretrained(ckpt)
    pipe.save_pretrained(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["unet"]["dim"] = 16
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_pretrained(ckpt)
    cfg["unet"]["dim"] = 8
    cfg["unet"]["colour"] = 1
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unet.colour: unknown key"):
        load_pretrained(ckpt)
    pipe.save_pretrained(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt"):
        load_pretrained(ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        load_pretrained(ckpt)


def test_save_pretrained_replaces_atomically(tmp_path):
    pipe = make_pipe()
    ckpt = save_pretrained(tmp_path / "ckpt", pipe.model, pipe.card)
    with torch.no_grad():
        for p in pipe.model.parameters():
            p.add_(1)
    save_pretrained(ckpt, pipe.model, pipe.card)
    model, _ = load_pretrained(ckpt)
    assert torch.equal(model.init_conv.weight, pipe.model.init_conv.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp or old dirs left behind


def test_video_writers(tmp_path):
    g = np.random.default_rng(0)
    video = g.integers(0, 255, (4, 8, 10, 3), dtype=np.uint8)
    written = save_video(tmp_path / "clip", video, fps=4, scale=2)
    assert sorted(p.suffix for p in written) == [".gif", ".mp4", ".png"]
    gif = Image.open(tmp_path / "clip.gif")
    assert gif.n_frames == 4 and gif.size == (20, 16)
    mp4 = (tmp_path / "clip.mp4").read_bytes()
    assert b"ftyp" in mp4[:32] and len(mp4) > 100
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(tmp_path / "clip.mp4"))
    meta = next(reader)
    assert meta["size"] == (20, 16) and len(list(reader)) == 4
    sheet = contact_sheet([video, video])
    assert sheet.shape == (2 * (8 + 2) + 2, 4 * (10 + 2) + 2, 3)
    assert np.array_equal(sheet[2:10, 2:12], video[0])
    out = save_grid(tmp_path / "grid.gif", [video] * 3, fps=4, scale=1)
    assert Image.open(out[0]).size == (20, 16)
    with pytest.raises(ValueError, match="uint8"):
        save_video(tmp_path / "bad.gif", video.astype(np.float32))


def test_video_writers_follow_the_extension_in_any_case(tmp_path):
    video = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    assert save_video(tmp_path / "clip.MP4", video, scale=1) == [tmp_path / "clip.MP4"]
    assert b"ftyp" in (tmp_path / "clip.MP4").read_bytes()[:32]
    assert Image.open(save_video(tmp_path / "clip.Gif", video, scale=1)[0]).format == "GIF"
    with pytest.raises(ValueError, match=r"unsupported extension '.avi' \(.gif, .mp4, .png"):
        save_video(tmp_path / "clip.avi", video)
    with pytest.raises(ValueError, match="scale: must be >= 1"):
        save_video(tmp_path / "clip.gif", video, scale=0)
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(save_grid(tmp_path / "g.mp4", [video] * 2, scale=1)) == ["g.mp4", "g.png"]
    assert names(save_grid(tmp_path / "g.gif", [video] * 2, scale=1)) == ["g.gif", "g.png"]
    assert names(save_grid(tmp_path / "g.PNG", [video] * 2, scale=1)) == ["g.PNG"]
    assert names(save_grid(tmp_path / "all", [video] * 2, scale=1)) == ["all.gif", "all.mp4", "all.png"]
    with pytest.raises(ValueError, match="unsupported extension"):
        save_grid(tmp_path / "g.webm", [video] * 2)


def test_atomic_outputs_get_the_umask_mode_not_owner_only(tmp_path):
    import os

    from t2v_model.video_io import save_gif

    old = os.umask(0o022)
    try:
        path = save_gif(tmp_path / "v.gif", torch.zeros(2, 4, 4, 3, dtype=torch.uint8))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_seed_none_draws_a_fresh_seed_without_touching_the_global_rng():
    pipe = make_pipe()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = pipe.generate(["a prompt"], steps=1, seed=None)
    assert torch.equal(torch.rand(3), expected)
    b = pipe.generate(["a prompt"], steps=1, seed=None)
    assert a.shape == b.shape and not torch.equal(a, b)  # two fresh seeds


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 1.5}, "steps: must be an integer"), ({"steps": "2"}, "steps: must be an integer"),
    ({"guidance": "3"}, "guidance: must be a number"), ({"seed": "0"}, "seed: must be None or an integer"),
    ({"seed": 2**70}, "seed: must be None or an integer"), ({"seed": -1}, "seed: must be None or an integer"),
])
def test_bad_argument_types_are_named(kwargs, message):
    pipe = make_pipe()
    with pytest.raises(ValueError, match=message):
        pipe.generate(["a"], **{"steps": 1, **kwargs})


def test_prompts_may_be_any_iterable_and_embeddings_are_checked_up_front():
    pipe = make_pipe()
    assert pipe.generate((p for p in ["a", "b"]), steps=1).shape[0] == 2
    for text, message in ((torch.ones(2, DIM, dtype=torch.long), "floating-point"), (np.ones((2, DIM)), "torch.Tensor"),
                          (torch.zeros(0, DIM), "B >= 1"), (torch.zeros(2, DIM + 1), r"\(B, 16\)"),
                          (torch.full((2, DIM), float("nan")), "NaN")):
        with pytest.raises(ValueError, match=f"text: .*{message}"):
            pipe.generate_from_embeddings(text, steps=1)
    torch.manual_seed(0)
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=DIM, attn_heads=2, attn_dim_head=8, cross_attn=True))
    cross = TextToVideo(model, make_pipe().card, text_encoder=StubEncoder())
    text = torch.randn(2, DIM)
    with pytest.raises(ValueError, match=r"tokens: this model attends to caption tokens and needs a tensor \(2, L, 16\)"):
        cross.generate_from_embeddings(text, tokens=torch.randn(3, 5, DIM), token_mask=torch.ones(3, 5), steps=1)
    with pytest.raises(ValueError, match=r"token_mask: needs a tensor \(2, 5\), got \(2, 4\)"):
        cross.generate_from_embeddings(text, tokens=torch.randn(2, 5, DIM), token_mask=torch.ones(2, 4), steps=1)
    video = cross.generate_from_embeddings(text, tokens=torch.randn(2, 5, DIM), token_mask=torch.ones(2, 5), steps=1)
    assert video.shape[0] == 2
