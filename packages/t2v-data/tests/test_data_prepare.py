import contextlib
import gzip
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from t2v_data.judge import judge_matches, judge_video
from t2v_data.prepare import run_prepare, split_of
from t2v_data.prepare_config import prepare_config
from t2v_data.shards import Manifest, iter_samples
from t2v_model.config import DataGeometry
from t2v_model.errors import DataError

REPO = Path(__file__).resolve().parents[3]


def cfg_for(out, **data):
    return prepare_config({"out_dir": str(out), "num_samples": 60, "shard_max_samples": 16, "val_fraction": 0.2,
                           **data})


def tars(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.tar"))}


def test_shapes_shards_manifest_and_split(tmp_path):
    s = run_prepare(cfg_for(tmp_path / "a"), seed=0, progress=False)
    m = Manifest.read(tmp_path / "a")
    assert m.geometry == DataGeometry(frames=8, height=32, width=32, channels=3, fps=8)
    assert m.stage == "prepare" and m.source == "shapes" and len(m.config_hash) == 64
    assert s.counts["train"] + s.counts["val"] == 60 and s.rejects == 0
    assert all(ref.count <= 16 for ref in m.shards())
    keys = {}
    for split in ("train", "val"):
        samples = list(iter_samples(m, split))
        assert len(samples) == m.count(split)
        keys[split] = {x.key for x in samples}
        for x in samples:
            assert split_of(x.meta["source_id"], 0.2) == split
            assert x.video.shape == (8, 32, 32, 3)
            assert x.meta["captions"] and all(c.strip() for c in x.meta["captions"])
            assert all(judge_matches(x.meta["attributes"], judge_video(x.video)).values())
    assert keys["val"] and not keys["train"] & keys["val"]
    assert (tmp_path / "a" / "rejects.jsonl").read_text() == ""


def test_rerun_is_idempotent_and_resumes(tmp_path):
    out = tmp_path / "a"
    run_prepare(cfg_for(out), seed=0, progress=False)
    before, manifest = tars(out), (out / "manifest.json").read_bytes()
    again = run_prepare(cfg_for(out), seed=0, progress=False)
    assert again.written == 0 and again.skipped == len(before)
    assert tars(out) == before and (out / "manifest.json").read_bytes() == manifest
    (out / "train-000001.tar").unlink()  # as if interrupted: only that shard is redone, identically
    (out / "manifest.json").unlink()
    resumed = run_prepare(cfg_for(out), seed=0, progress=False)
    assert resumed.written == 1 and tars(out) == before


def test_workers_give_identical_bytes(tmp_path):
    run_prepare(cfg_for(tmp_path / "one", workers=1), seed=0, progress=False)
    run_prepare(cfg_for(tmp_path / "two", workers=2), seed=0, progress=False)
    assert tars(tmp_path / "one") == tars(tmp_path / "two")


def test_other_config_in_out_dir_is_refused(tmp_path):
    out = tmp_path / "a"
    run_prepare(cfg_for(out), seed=0, progress=False)
    with pytest.raises(DataError, match=r"different data config.*new data.out_dir or --overwrite"):
        run_prepare(cfg_for(out, num_samples=61), seed=0, progress=False)
    s = run_prepare(cfg_for(out, num_samples=30), seed=0, overwrite=True, progress=False)
    assert s.counts["train"] + s.counts["val"] == 30 and s.skipped == 0


def test_digits_from_sklearn_and_idx(tmp_path):
    s = run_prepare(
        cfg_for(tmp_path / "d", source="digits", num_samples=12, size=64, frames=16), seed=0, progress=False
    )
    assert s.counts["train"] + s.counts["val"] == 12
    x = next(iter_samples(Manifest.read(tmp_path / "d"), "train"))
    assert x.video.shape == (16, 64, 64, 3)
    a = x.meta["attributes"]
    assert x.meta["captions"][0].startswith(f"the digit {a['digit']} ")
    assert x.video[:, 0].max() == 0 and x.video[:, :, -1].max() == 0  # fully inside the canvas

    mnist = tmp_path / "mnist"
    mnist.mkdir()
    images = np.zeros((3, 28, 28), np.uint8)
    images[:, 6:22, 12:16] = 255  # a "1"-like bar
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
    (mnist / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    (mnist / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 1, 1]))
    run_prepare(
        cfg_for(tmp_path / "m", source="digits", num_samples=4, digits={"mnist_dir": str(mnist)}),
        seed=0,
        progress=False,
    )
    metas = [x.meta for sp in ("train", "val") for x in iter_samples(Manifest.read(tmp_path / "m"), sp)]
    assert {m["attributes"]["dataset"] for m in metas} == {"mnist"}
    assert all(m["captions"][0].startswith("the digit 1 ") for m in metas)
    (mnist / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09\x01")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: header says"):
        run_prepare(
            cfg_for(tmp_path / "m2", source="digits", num_samples=4, digits={"mnist_dir": str(mnist)}),
            seed=0,
            progress=False,
        )


def _pipeline():
    spec = importlib.util.spec_from_file_location("prepare_pipeline", REPO / "pipelines" / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pipeline_cli(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: t\nseed: 1\ndata:\n  out_dir: {tmp_path / 'out'}\n  num_samples: 10\n")
    main = _pipeline().main
    assert main(["--config", str(cfg), "--quiet", "data.frames=6"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "clips/s" in out
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["geometry"]["frames"] == 6
    assert main(["--config", str(cfg), "data.frames=six"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: data.frames:") and "\n" not in err
    assert (
        main(
            [
                "--config",
                str(cfg),
                "data.source=folder",
                f"data.folder.dir={tmp_path / 'none'}",
                f"data.out_dir={tmp_path / 'o2'}",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "video folder not found" in err and "\n" not in err


def files_state(out):
    """(inode, mtime) of every file: an atomic rewrite changes the inode even within one mtime tick."""
    files = (p for p in out.rglob("*") if p.is_file())
    return {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


def test_finished_rerun_writes_nothing(tmp_path):
    out = tmp_path / "a"
    run_prepare(cfg_for(out), seed=0, progress=False)
    before = files_state(out)
    assert ".prepare/config.json" in before and "rejects.jsonl" in before
    run_prepare(cfg_for(out, workers=2), seed=0, progress=False)  # workers do not change the data
    run_prepare(cfg_for(out), seed=0, progress=False)
    assert files_state(out) == before


def test_another_stage_dir_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "embedded"
    run_prepare(cfg_for(out), seed=0, progress=False)
    # what the embed stage leaves: the raw manifest copied (config_hash included) with its own stage, no .prepare/
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**m, "stage": "embed"}))
    shutil.rmtree(out / ".prepare")
    before = files_state(out)
    for overwrite in (False, True):
        with pytest.raises(DataError, match=r"embedded: holds the embed stage's output"):
            run_prepare(cfg_for(out), seed=0, overwrite=overwrite, progress=False)
    assert files_state(out) == before


def test_overwrite_refuses_shards_it_did_not_record(tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"someone else's")
    with pytest.raises(DataError, match=r"did not record; refusing to delete them"):
        run_prepare(cfg_for(out), seed=0, overwrite=True, progress=False)
    assert (out / "train-000000.tar").read_bytes() == b"someone else's"


def test_unusable_out_dir_is_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    unusable = [tmp_path / "file", tmp_path / "file" / "sub"]
    if Path("/proc/self").is_dir():
        unusable.append(Path("/proc"))  # writable to root by os.access, yet no file can be created there
    for out in unusable:
        with pytest.raises(DataError, match=r"unusable data\.out_dir"):
            run_prepare(cfg_for(out), seed=0, progress=False)


def test_pipeline_overrides_after_flags_and_interrupt(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\ndata:\n  num_samples: 10\n")
    mod = _pipeline()
    out = tmp_path / "out"
    assert mod.main(["--config", str(cfg), "data.num_samples=12", "--quiet", f"data.out_dir={out}"]) == 0
    assert Manifest.read(out).count("train") + Manifest.read(out).count("val") == 12
    capsys.readouterr()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "run_prepare", interrupted)
    assert mod.main(["--config", str(cfg), "--quiet", "data.num_samples=12", f"data.out_dir={out}"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"interrupted: 1 finished shards kept in {out}; run the same command again to resume"
    assert mod.main(["--config", str(cfg), "--overwrite", "--quiet", f"data.out_dir={out}"]) == 130
    assert capsys.readouterr().err.strip().endswith("; run again without --overwrite to resume")


def _stat(pid):
    """(state, ppid) from /proc, or None once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _alive(pid):
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _children(pid):
    return [int(d.name) for d in Path("/proc").glob("[0-9]*") if (_stat(d.name) or ("", 0))[1] == pid]


def test_a_finished_run_with_workers_prints_nothing_on_stderr(tmp_path):
    # the idle workers used to be stopped by SIGTERM, whose handler raised during their shutdown and printed
    # "Exception ignored in: <module 'threading'> ... SystemExit: 143"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  out_dir: {tmp_path / 'out'}\n  num_samples: 160\n  shard_max_samples: 20\n  workers: 2\n")
    for _ in range(3):  # the old noise came with 2 or 3 runs in 4
        r = subprocess.run([sys.executable, str(REPO / "pipelines" / "prepare.py"), "--config", str(cfg), "--quiet",
                            "--overwrite"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stderr == ""


@contextlib.contextmanager
def prepare_process(tmp_path, **data):
    """pipelines/prepare.py on a config of `data` (out_dir: tmp_path/out), in a process group of its own that is
    killed on the way out whatever the test did: yields (process, out_dir)."""
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n" + "".join(f"  {k}: {v}\n" for k, v in {"out_dir": out, "workers": 2, **data}.items()))
    p = subprocess.Popen([sys.executable, str(REPO / "pipelines" / "prepare.py"), "--config", str(cfg), "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield p, out
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()


def wait_for(condition, seconds=60):
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.02)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_sigterm_to_the_process_group_stops_and_does_not_hang(tmp_path):
    # systemd stop, Slurm scancel and `kill -TERM -PGID` signal the parent and the idle workers together
    with prepare_process(tmp_path, num_samples=600, shard_max_samples=600, val_fraction=0.02) as (p, out):
        wait_for(lambda: (out / ".prepare" / "val-000000.tar.json").exists())
        time.sleep(0.2)  # the val worker is now idle, waiting for a task
        os.killpg(p.pid, signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert err.startswith("interrupted: ") and "finished shards kept" in err and err.count("\n") == 1, err
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_sigterm_stops_the_workers_too(tmp_path):
    with prepare_process(tmp_path, num_samples=100000, shard_max_samples=100) as (p, out):
        wait_for(lambda: list((out / ".prepare").glob("*.tar.json")))
        workers = _children(p.pid)
        p.terminate()  # SIGTERM to the main process only
        _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert err.startswith("interrupted: ") and err.strip().count("\n") == 0 and "resume" in err
    wait_for(lambda: not any(_alive(w) for w in workers), 10)
    assert workers and not [w for w in workers if _alive(w)]
    assert not list(out.glob(".*.tmp"))


def test_pipeline_default_out_dir_is_where_embed_looks(tmp_path, monkeypatch, capsys):
    # without data.out_dir the raw shards go to data/<name>/raw, the embed stage's default in_dir (docs/FORMATS.md)
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: noout\ndata:\n  num_samples: 6\n  frames: 4\n  size: 16\n")
    assert _pipeline().main(["--config", str(cfg), "--quiet"]) == 0
    assert (tmp_path / "data" / "noout" / "raw" / "manifest.json").is_file()


def test_interrupt_outside_the_writers_cleanup_leaves_no_temp_file(tmp_path, monkeypatch):
    # Ctrl-C (or a worker's SIGTERM) can land where the writer's own cleanup does not reach, e.g. in close()
    # before the rename; the run removes the temp files on the way out, and a re-run gives the usual shards.
    import t2v_data.prepare as prepare

    close = prepare.ShardWriter.close
    calls = []

    def interrupted_close(self):
        calls.append(self.path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return close(self)

    monkeypatch.setattr(prepare.ShardWriter, "close", interrupted_close)
    out = tmp_path / "a"
    with pytest.raises(KeyboardInterrupt):
        run_prepare(cfg_for(out, workers=1), seed=0, progress=False)
    assert len(calls) == 2 and len(list(out.glob("*.tar"))) == 1
    assert not list(out.rglob(".*.tmp"))
    monkeypatch.setattr(prepare.ShardWriter, "close", close)
    run_prepare(cfg_for(out, workers=1), seed=0, progress=False)
    run_prepare(cfg_for(tmp_path / "b", workers=1), seed=0, progress=False)
    assert tars(out) == tars(tmp_path / "b")


def _writing(pid) -> str | None:
    """The shard a worker is writing: the one whose temp file it has open."""
    try:
        links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:  # it exited meanwhile
        return None
    return next((Path(t).name[1:].split(".tar.")[0] + ".tar" for t in links if Path(t).name.endswith(".tmp")), None)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_a_worker_killed_hard_is_an_error_not_a_hang(tmp_path):
    # e.g. the OOM killer: multiprocessing.Pool replaced the worker and waited for its lost result for ever
    with prepare_process(tmp_path, num_samples=3000, shard_max_samples=1000) as (p, out):
        victim, shard = None, None

        def one_is_writing() -> bool:
            nonlocal victim, shard
            for w in _children(p.pid):
                if shard := _writing(w):
                    victim = w
                    return True
            return False

        wait_for(one_is_writing)  # a shard takes over a second: the worker is still on it when killed
        workers = [w for w in _children(p.pid) if b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes()]
        os.kill(victim, signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 1, err
    assert err.startswith(f"error: a prepare worker died (exit code -9) while writing {shard}, "), err
    assert err.count("\n") == 1, err
    wait_for(lambda: not any(_alive(w) for w in workers), 10)
    assert not list(out.rglob(".*.tmp")) and not [w for w in workers if _alive(w)]


def test_a_worker_that_cannot_start_reports_its_own_error(tmp_path):
    # the spawned worker imports this script too (as __mp_main__), so its source's maker fails there as well
    script = tmp_path / "bad_init.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO / 'pipelines')!r})\n"
        "from t2v_data.registry import SOURCES\nfrom t2v_model.errors import DataError\n\n"
        "def bad(*a):\n    raise DataError('bad.mp4: unusable input')\n\n"
        "SOURCES['shapes'].maker = bad\nimport prepare\n\nif __name__ == '__main__':\n    sys.exit(prepare.main())\n"
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  out_dir: {tmp_path / 'out'}\n  num_samples: 200\n  shard_max_samples: 100\n  workers: 2\n")
    r = subprocess.run([sys.executable, str(script), "--config", str(cfg), "--quiet"], capture_output=True, text=True,
                       timeout=120)
    assert (r.returncode, r.stderr) == (1, "error: bad.mp4: unusable input\n")  # was "a worker died" + a traceback
