"""pipelines/generate.py end to end on a tiny checkpoint, with the real packaged BERT (offline)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from t2v_model import DataGeometry, DiffusionConfig, ModelCard, TextEncoderInfo, Unet3D, UnetConfig
from t2v_model.checkpoint import save_pretrained

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipelines"))
import generate  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=384, attn_heads=2, attn_dim_head=8))
    card = ModelCard(diffusion=DiffusionConfig(timesteps=50), text_encoder=TextEncoderInfo(dim=384),
                     data=DataGeometry(frames=3, height=8, width=8, fps=4))
    return save_pretrained(tmp_path_factory.mktemp("ckpt") / "model", model, card)


def test_generate_writes_mp4_gif_png(checkpoint, tmp_path, capsys):
    out = tmp_path / "clip"
    rc = generate.main(["--checkpoint", str(checkpoint), "--prompt", "a red circle moving left", "--steps", "3",
                        "--seed", "1", "--out", str(out), "--scale", "2"])
    assert rc == 0
    assert Image.open(out.with_suffix(".gif")).n_frames == 3
    assert (out.with_suffix(".mp4")).stat().st_size > 0
    assert Image.open(out.with_suffix(".png")).size == (3 * 18 + 2, 18 + 2)
    rc = generate.main(["--checkpoint", str(checkpoint), "--prompt", "a", "--prompt", "b", "--steps", "2",
                        "--out", str(tmp_path / "many.gif")])
    assert rc == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"many-0.gif", "many-1.gif", "many-grid.gif", "many-grid.png"}


def test_generate_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    rc = generate.main(["--checkpoint", str(tmp_path / "missing"), "--prompt", "x"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "not found" in err and "\n" not in err


def test_inference_imports_only_t2v_model():
    code = ("import sys, t2v_model.pipeline, t2v_model.text_encoder, t2v_model.video_io; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'t2v_data', 't2v_textenc', 't2v_train', "
            "'webdataset', 'yaml'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
