"""What a killed, preempted or starved training run leaves behind: the exported model always matches the newest
checkpoint, SIGTERM / SIGUSR1 / Ctrl-C save the current step, a full disk is one line with the older checkpoints
intact, and resume says when it cannot be exact."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t2v_model.checkpoint import exported_step
from t2v_model.errors import DataError
from t2v_train import load_experiment, train
from t2v_train.checkpoint import list_checkpoints, step_dir

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "pipelines"))
import train as train_cli  # noqa: E402


def test_a_missing_or_stale_export_is_redone_and_leftovers_removed(make_experiment, capsys):
    exp = make_experiment(steps=10, checkpoint_every=5)
    train(exp, progress=False)
    model, ckpts = exp.out_dir / "model", exp.out_dir / "checkpoints"
    assert exported_step(model) == 10
    # kill -9 right after the final checkpoint: model/ missing (or still the step-5 export), temp dirs left
    for p in model.iterdir():
        p.unlink()
    model.rmdir()
    (exp.out_dir / ".model.x1y2.tmp").mkdir()
    (ckpts / ".step-000005.removed.tmp").mkdir()
    (ckpts / ".step-000010.tmp").mkdir()
    capsys.readouterr()
    assert train(make_experiment(steps=10, checkpoint_every=5), progress=False)["loss"] is None  # nothing to train
    out = capsys.readouterr().out
    assert "removed what an interrupted run left: .model.x1y2.tmp, .step-000005.removed.tmp, .step-000010.tmp" in out
    assert f"exported {model} from {step_dir(ckpts, 10)}" in out
    assert exported_step(model) == 10 and not [p for p in (exp.out_dir, ckpts) for q in p.iterdir()
                                               if q.name.startswith(".")]
    exported, ema = load_file(str(model / "model.safetensors")), load_file(str(step_dir(ckpts, 10) / "ema.safetensors"))
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)
    capsys.readouterr()
    train(make_experiment(steps=10, checkpoint_every=5), progress=False)
    assert "exported" not in capsys.readouterr().out  # up to date: not written again


def wait_for(condition, seconds: float = 120) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def last_step(out: Path) -> int:
    try:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return 0
    return max((r["step"] for r in rows if "loss" in r), default=0)


@pytest.mark.parametrize("signum, code, label", [(signal.SIGTERM, 143, "stopped"), (signal.SIGUSR1, 143, "stopped"),
                                                 (signal.SIGINT, 130, "interrupted")])
def test_a_stop_signal_saves_the_current_step(shards, tiny_raw, tmp_path, signum, code, label):
    out = tmp_path / "run"
    config = tmp_path / "exp.yaml"
    config.write_text(json.dumps(tiny_raw(shards, out, steps=100000, checkpoint_every=100000, log_every=1)))
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "train.py"), "--config", str(config), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert wait_for(lambda: last_step(out) >= 3), proc.stderr.read() if proc.poll() is not None else "no steps"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    (ckpt,) = list_checkpoints(out / "checkpoints")
    name = signal.Signals(signum).name
    assert err == (f"{label}: {name} at step {ckpt.step}: checkpoint {ckpt.path} written; run the same command "
                   f"again to resume\n")
    assert ckpt.step >= 3 and exported_step(out / "model") == ckpt.step
    # the same command (here with a reachable end) resumes from it
    exp = load_experiment(None, raw=tiny_raw(shards, out, steps=ckpt.step + 2, checkpoint_every=100000))
    assert train(exp, progress=False)["step"] == ckpt.step + 2


def test_a_second_ctrl_c_stops_at_once():
    from t2v_train.trainer import StopRequest

    stop = StopRequest()
    stop.handle(signal.SIGINT, None)
    assert stop.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGINT, None)


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_older_checkpoints(shards, tiny_raw, tmp_path, capsys,
                                                                             monkeypatch):
    import t2v_model.checkpoint as model_ckpt

    out = tmp_path / "run"
    config = tmp_path / "exp.yaml"
    config.write_text(json.dumps(tiny_raw(shards, out, steps=6, checkpoint_every=3)))
    real, calls = model_ckpt.save_file, []

    def full_disk(tensors, path, metadata=None):  # what safetensors raises when the disk fills up
        calls.append(path)
        if len(calls) > 3:  # step 3: model, ema, export; step 6: the disk is full
            from safetensors import SafetensorError

            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                  "\"No space left on device\" })")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(model_ckpt, "save_file", full_disk)
    assert train_cli.main(["--config", str(config), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / 'checkpoints' / '.step-000006.tmp' / 'model.safetensors'}: cannot write "
                          f"(Error while serializing"), err
    assert err.count("\n") == 1
    assert [c.step for c in list_checkpoints(out / "checkpoints")] == [3] and exported_step(out / "model") == 3
    monkeypatch.setattr(model_ckpt, "save_file", real)
    assert train_cli.main(["--config", str(config), "--quiet"]) == 0  # resumes from step 3 once there is room
    assert "removed what an interrupted run left: .step-000006.tmp" in capsys.readouterr().out
    assert exported_step(out / "model") == 6


def test_resume_without_an_rng_state_says_it_is_not_exact(make_experiment, capsys):
    exp = make_experiment(steps=4, checkpoint_every=2)
    train(exp, progress=False)
    (step_dir(exp.out_dir / "checkpoints", 4) / "rng-rank0.pt").unlink()
    capsys.readouterr()
    train(make_experiment(steps=6, checkpoint_every=2), progress=False)
    assert "rng-rank0.pt: missing; resuming with fresh random state, so the run will not repeat the uninterrupted " \
           "one exactly" in capsys.readouterr().out


def test_shards_cut_at_another_max_length_are_refused(shards, tiny_raw, tmp_path):
    raw = tiny_raw(shards, tmp_path / "run")
    raw["embed"]["max_length"] = 77
    with pytest.raises(DataError, match=r"manifest.json: captions were embedded cut at 6 tokens but embed.max_length "
                                        r"is 77; re-run the embed stage, or set embed.max_length to 6"):
        train(load_experiment(None, raw=raw), progress=False)


def test_torch_save_failing_for_space_names_the_file(tmp_path, monkeypatch):
    from t2v_train.checkpoint import _torch_save

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as e:
        _torch_save({}, tmp_path / "optimizer.pt")
    assert e.value.filename == str(tmp_path / "optimizer.pt") and e.value.errno == errno.EIO


def test_a_malformed_embedded_sample_stops_training_in_one_line(shards, tiny_raw, tmp_path, capsys):
    import io
    import shutil
    import tarfile

    import numpy as np

    bad = Path(shutil.copytree(shards, tmp_path / "bad"))
    with tarfile.open(shards / "train-000000.tar") as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 8, 8, 3), np.float64), allow_pickle=False)  # the right shape, the wrong dtype
    with tarfile.open(bad / "train-000000.tar", "w") as dst:
        for info, data in members:
            if info.name == "test-000005.video.npy":
                data = buf.getvalue()
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    config = tmp_path / "exp.yaml"
    config.write_text(json.dumps(tiny_raw(bad, tmp_path / "run", steps=20)))
    assert train_cli.main(["--config", str(config), "--quiet"]) == 1
    assert capsys.readouterr().err == (f"error: {bad / 'train-000000.tar'}: sample test-000005: video.npy is float64 "
                                       f"(4, 8, 8, 3), the manifest says uint8 (4, 8, 8, 3)\n")
