"""pipelines/generate.py end to end on a tiny checkpoint, with the real packaged BERT (offline)."""

import json
import shutil
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


def test_generate_with_each_sampler(checkpoint, tmp_path, capsys):
    for sampler in ("ddim", "ddpm", "dpm++"):
        rc = generate.main(["--checkpoint", str(checkpoint), "--prompt", "x", "--steps", "3", "--sampler", sampler,
                            "--quiet", "--out", str(tmp_path / f"{sampler}.gif")])
        assert rc == 0 and (tmp_path / f"{sampler}.gif").is_file()
        assert f"(3 {sampler} steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        generate.main(["--checkpoint", str(checkpoint), "--prompt", "x", "--sampler", "dpmpp"])
    err = capsys.readouterr().err
    assert "--sampler: invalid choice: 'dpmpp'" in err and "dpm++" in err


def test_generate_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    rc = generate.main(["--checkpoint", str(tmp_path / "missing"), "--prompt", "x"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error:") and "not found" in err and "\n" not in err  # 1: input, not usage


def _one_line_error(capsys, starts: str, kind: str = "error") -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{kind}: {starts}") and "\n" not in err, err
    return err


@pytest.mark.parametrize("flags, expected", [
    (["--out", "x.avi"], "--out x.avi: unsupported extension '.avi' (.gif, .mp4, .png"),
    (["--out", "notes.txt/x.gif"], "--out notes.txt/x.gif: notes.txt is not a directory"),
    (["--device", "tpu"], "--device tpu: unknown"),
    (["--device", "cuda:99"], "--device cuda:99: "),
    (["--guidance", "nan"], "--guidance: must be a finite number"),
    (["--guidance", "inf"], "--guidance"),
    (["--eta", "-1"], "--eta: must be in [0, 1]"),
    (["--eta", "5"], "--eta"),
    (["--scale", "0"], "--scale: must be >= 1"),
    (["--scale", "-2"], "--scale"),
    (["--steps", "0"], "--steps: must be >= 1"),
    (["--steps", "51"], "--steps: at most 50"),  # the fixture's diffusion timesteps
    (["--scale", "100000"], "--scale: 100000 makes"),  # would fail for memory when writing, after the sampling
    (["--seed", "-1"], "--seed"),
    (["--prompt", " "], "--prompt: must not be empty"),
])
def test_bad_flags_are_one_line_errors_before_sampling(checkpoint, tmp_path, monkeypatch, capsys, flags, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a file, not a directory")
    monkeypatch.setattr(generate.TextToVideo, "generate", lambda *a, **k: pytest.fail("sampled before the check"))
    rc = generate.main(["--checkpoint", str(checkpoint), "--prompt", "x", "--out", "v.gif", *flags])
    assert rc == 2
    assert expected in _one_line_error(capsys, "--", "config error")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_an_unwritable_out_is_refused_before_sampling_also_as_root(checkpoint, capsys, monkeypatch):
    # os.access says /proc is writable to root; only creating a file tells
    monkeypatch.setattr(generate.TextToVideo, "generate", lambda *a, **k: pytest.fail("sampled before the check"))
    rc = generate.main(["--checkpoint", str(checkpoint), "--prompt", "x", "--out", "/proc/v.gif"])
    assert rc == 2
    assert "--out /proc/v.gif: /proc is not writable" in _one_line_error(capsys, "--", "config error")


def test_ctrl_c_while_sampling_is_one_line_and_exit_130(checkpoint, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate.TextToVideo, "generate", interrupted)
    rc = generate.main(["--checkpoint", str(checkpoint), "--prompt", "x", "--out", str(tmp_path / "v.gif")])
    assert rc == 130 and capsys.readouterr().err == "interrupted: nothing was written\n"
    assert not list(tmp_path.iterdir())


def test_a_missing_text_encoder_is_a_one_line_error(checkpoint, tmp_path, capsys):
    ckpt = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    card = json.loads((ckpt / "config.json").read_text())
    card["text_encoder"]["id"] = str(tmp_path / "no-such-encoder")
    (ckpt / "config.json").write_text(json.dumps(card))
    assert generate.main(["--checkpoint", str(ckpt), "--prompt", "x", "--out", str(tmp_path / "v.gif")]) == 1
    assert "no such model directory" in _one_line_error(capsys, "text encoder")


def test_out_directories_extension_case_grid_format_and_quiet(checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(checkpoint), "--steps", "1", "--scale", "1"]
    # a path ending in / (created) or an existing directory: files named after the prompt inside it
    assert generate.main([*base, "--prompt", "A red circle, moving left!", "--out", f"{tmp_path}/new/"]) == 0
    assert "sampling" in capsys.readouterr().err  # the progress bar, unless --quiet
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "a-red-circle-moving-left.gif", "a-red-circle-moving-left.mp4", "a-red-circle-moving-left.png"]
    assert generate.main([*base, "--prompt", "a", "--prompt", "b", "--out", str(tmp_path / "new"), "--quiet"]) == 0
    assert "sampling" not in capsys.readouterr().err
    assert {p.name for p in (tmp_path / "new").iterdir()} >= {"0-a.mp4", "1-b.png", "grid.gif", "grid.mp4", "grid.png"}
    # an upper-case extension is that format; the grid follows it (+ its .png contact sheet)
    assert generate.main([*base, "--prompt", "a", "--prompt", "b", "--out", str(tmp_path / "m.MP4"), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.glob("m-*")) == ["m-0.MP4", "m-1.MP4", "m-grid.MP4", "m-grid.png"]
    assert b"ftyp" in (tmp_path / "m-grid.MP4").read_bytes()[:32]


def test_inference_imports_only_t2v_model():
    code = ("import sys, t2v_model.pipeline, t2v_model.text_encoder, t2v_model.video_io; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'t2v_data', 't2v_textenc', 't2v_train', "
            "'webdataset', 'yaml'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _tiny_bert(directory: Path, seed: int) -> Path:
    """A random 1-layer 16-d BERT with the packaged MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    from t2v_model.text_encoder import packaged_model_path

    directory.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(packaged_model_path() / name, directory / name)
    torch.manual_seed(seed)
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=128)).save_pretrained(directory)
    return directory


def test_text_encoder_flag_gives_a_local_copy_of_the_cards_encoder(tmp_path, capsys):
    from t2v_model.text_encoder import TextEncoder

    encoder_dir = _tiny_bert(tmp_path / "encoders" / "tiny-bert", seed=0)
    info = TextEncoder(encoder_dir).info()
    torch.manual_seed(0)
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=16, attn_heads=2, attn_dim_head=8))
    card = ModelCard(diffusion=DiffusionConfig(timesteps=50), text_encoder=TextEncoderInfo(**info),
                     data=DataGeometry(frames=3, height=8, width=8, fps=4))
    ckpt = save_pretrained(tmp_path / "ckpt", model, card)
    assert json.loads((ckpt / "config.json").read_text())["text_encoder"]["id"] == "tiny-bert"
    base = ["--checkpoint", str(ckpt), "--prompt", "x", "--steps", "1", "--quiet"]
    assert generate.main([*base, "--text-encoder", str(encoder_dir), "--out", str(tmp_path / "v.gif")]) == 0
    assert (tmp_path / "v.gif").is_file()
    capsys.readouterr()
    assert generate.main([*base, "--text-encoder", str(tmp_path / "nope"), "--out", str(tmp_path / "w.gif")]) == 2
    assert f"--text-encoder {tmp_path / 'nope'}: no such model directory" in _one_line_error(capsys, "--",
                                                                                           "config error")
    other = _tiny_bert(tmp_path / "other" / "tiny-bert", seed=1)
    capsys.readouterr()  # its save_pretrained's progress bar
    assert generate.main([*base, "--text-encoder", str(other), "--out", str(tmp_path / "w.gif")]) == 1
    err = _one_line_error(capsys, f"text encoder {other} (for 'tiny-bert') has weights ")
    assert f"trained with weights {info['weights_hash']}" in err and not (tmp_path / "w.gif").exists()
