"""The prepare stage under faults: a full disk is one line naming the file with the finished shards intact, links
out of the folder are not followed, and a one-frame file is no clip."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from t2v_data.prepare import run_prepare
from t2v_data.prepare_config import prepare_config
from t2v_data.shards import Manifest, iter_samples, iter_tar

REPO = Path(__file__).resolve().parents[3]


def pipeline():
    spec = importlib.util.spec_from_file_location("prepare_pipeline", REPO / "pipelines" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_full_disk_is_one_line_naming_the_shard_and_keeps_the_finished_ones(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  out_dir: {out}\n  num_samples: 40\n  shard_max_samples: 10\n  val_fraction: 0\n")
    real, written = tarfile.TarFile.addfile, []

    def disk_fills_up(self, info, fileobj=None):
        written.append(info.name)
        if len(written) > 2 * 25:  # 25 samples of two members fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", disk_fills_up)
    assert pipeline().main(["--config", str(cfg), "--quiet"]) == 1
    assert capsys.readouterr().err == f"error: {out / 'train-000002.tar'}: No space left on device\n"
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert not list(out.rglob(".*.tmp"))
    assert all(len(list(iter_tar(p))) == 10 for p in out.glob("*.tar"))  # the finished shards are whole
    monkeypatch.setattr(tarfile.TarFile, "addfile", real)
    assert pipeline().main(["--config", str(cfg), "--quiet"]) == 0  # room again: it resumes
    assert "shards written 2, already complete 2" in capsys.readouterr().out


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"t2v-test-{uuid.uuid4().hex[:8]}", str(path)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); the injected test covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_really_full_disk_in_a_small_tmpfs(tmp_path):
    with tmpfs(tmp_path / "small", "320k") as small:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"data:\n  out_dir: {small / 'out'}\n  num_samples: 60\n  shard_max_samples: 5\n"
                       f"  val_fraction: 0\n  workers: 2\n")
        r = subprocess.run([sys.executable, str(REPO / "pipelines" / "prepare.py"), "--config", str(cfg), "--quiet"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith(f"error: {small / 'out'}/") and r.stderr.endswith(": No space left on device\n")
        assert r.stderr.count("\n") == 1
        finished = [json.loads(p.read_text()) for p in (small / "out" / ".prepare").glob("*.tar.json")]
        assert finished  # some shards were finished before the disk filled up, and they read back whole
        for rec in finished:
            assert len(list(iter_tar(small / "out" / rec["name"]))) == rec["count"]
        assert not list((small / "out").rglob(".*.tmp"))


def gif(path: Path, frames: int, fps: float = 10) -> None:
    writer = imageio_ffmpeg.write_frames(str(path), (16, 16), fps=fps, codec="gif", macro_block_size=1,
                                         output_params=["-f", "gif"], ffmpeg_log_level="error")
    writer.send(None)
    for i in range(frames):
        writer.send(np.full((16, 16, 3), 20 * i % 256, np.uint8))
    writer.close()


def test_a_one_frame_file_is_no_clip_even_resampled_to_more_frames(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=32x32:r=1:d=1", "-frames:v", "1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-r", "1", str(d / "still.mp4")], check=True)
    (d / "still.txt").write_text("a red square moving left")
    gif(d / "moving.gif", 12)
    (d / "moving.txt").write_text("a fade")
    out = tmp_path / "out"
    run_prepare(prepare_config({"source": "folder", "out_dir": str(out), "frames": 4, "size": 16, "fps": 8,
                                "val_fraction": 0, "folder": {"dir": str(d)}}), progress=False)
    rejects = {json.loads(line)["source_id"]: json.loads(line)["reason"]
               for line in (out / "rejects.jsonl").read_text().splitlines()}
    assert rejects == {"still.mp4": "too short (1 frame)"}
    assert [s.meta["source_id"] for s in iter_samples(Manifest.read(out), "train")] == ["moving.gif"]


def test_links_out_of_the_folder_are_not_followed_unless_asked(tmp_path):
    d, elsewhere = tmp_path / "clips", tmp_path / "elsewhere"
    d.mkdir()
    elsewhere.mkdir()
    gif(elsewhere / "far.gif", 12)
    (elsewhere / "secret.txt").write_text("root:x:0:0")
    gif(d / "a.gif", 12)
    (d / "a.txt").symlink_to(elsewhere / "secret.txt")  # a caption that is a system file
    (d / "b.gif").symlink_to(elsewhere / "far.gif")  # a video from elsewhere
    (d / "b.txt").write_text("a fade from elsewhere")
    gif(d / "c.gif", 12)
    (d / "c.txt").write_text("a fade")
    (d / "inside.gif").symlink_to(d / "c.gif")  # a link within the folder is fine
    (d / "inside.txt").write_text("the same fade")
    data = {"source": "folder", "out_dir": str(tmp_path / "out"), "frames": 4, "size": 16, "val_fraction": 0,
            "folder": {"dir": str(d)}}
    run_prepare(prepare_config(data), progress=False)
    reasons = {json.loads(line)["source_id"]: json.loads(line)["reason"]
               for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()}
    assert reasons == {"a.gif": "a.txt: a link to outside data.folder.dir; set data.folder.follow_symlinks: true to "
                                "take it",
                       "b.gif": "b.gif: a link to outside data.folder.dir; set data.folder.follow_symlinks: true to "
                                "take it"}
    data = {**data, "out_dir": str(tmp_path / "out2"), "folder": {"dir": str(d), "follow_symlinks": True}}
    run_prepare(prepare_config(data), progress=False)
    got = {s.meta["source_id"] for s in iter_samples(Manifest.read(tmp_path / "out2"), "train")}
    assert got == {"a.gif", "b.gif", "c.gif", "inside.gif"}
