"""Exact resume, atomic checkpoints (kill -9 mid-save), keep-last-K by step number, and a falling loss."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from t2v_model.checkpoint import load_pretrained
from t2v_train import train
from t2v_train.checkpoint import latest_checkpoint, list_checkpoints, step_dir
from t2v_train.trainer import read_metrics


def losses(out_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out_dir) if "loss" in r}


def test_resume_reproduces_the_uninterrupted_run(make_experiment, tmp_path):
    full = make_experiment("full", num_workers=2)
    train(full, progress=False)
    # a second run that only has the step-10 checkpoint of the first: it must continue exactly
    part = make_experiment("part", num_workers=2)
    (part.out_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(step_dir(full.out_dir / "checkpoints", 10), step_dir(part.out_dir / "checkpoints", 10))
    train(part, progress=False)
    a, b = losses(full.out_dir), losses(part.out_dir)
    assert sorted(b) == list(range(11, 21))
    for step in range(11, 21):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    wa, _ = load_pretrained(full.out_dir / "model")
    wb, _ = load_pretrained(part.out_dir / "model")
    for (name, pa), pb in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_loss_falls_and_checkpoints_are_kept_by_step_number(make_experiment):
    exp = make_experiment(steps=120, lr=3e-3, checkpoint_every=9, keep_checkpoints=2, log_every=1)
    summary = train(exp, progress=False)
    got = losses(exp.out_dir)
    first, last = sum(got[s] for s in range(1, 21)) / 20, sum(got[s] for s in range(101, 121)) / 20
    assert last < 0.6 * first, (first, last)
    # step-000099 < step-000108 < step-000117 < step-000120 by number; keep the last two
    assert [c.step for c in list_checkpoints(exp.out_dir / "checkpoints")] == [117, 120]
    assert summary["step"] == 120 and (exp.out_dir / "samples" / "step-000120.gif").is_file()


KILLER = """
import os, signal, sys, torch
torch.set_num_threads(1)
import t2v_train.checkpoint as ckpt
from t2v_train import load_experiment, train
real = ckpt._torch_save
def dying_save(obj, path):
    if path.name == "optimizer.pt" and ".step-000004" in str(path.parent):
        with open(path, "wb") as f:
            f.write(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    real(obj, path)
ckpt._torch_save = dying_save
train(load_experiment(None, raw={raw!r}), progress=False)
"""


def test_kill_during_save_keeps_the_previous_checkpoint(make_experiment, shards, tiny_raw, tmp_path):
    raw = tiny_raw(shards, tmp_path / "killed", steps=6, checkpoint_every=2)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER.format(raw=raw))], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    root = tmp_path / "killed" / "checkpoints"
    assert latest_checkpoint(root).step == 2
    assert any(p.name.startswith(".step-000004") for p in root.iterdir())  # the half-written one, ignored
    load_pretrained(tmp_path / "killed" / "model")  # the export of step 2 is intact
    exp = make_experiment("killed", steps=6, checkpoint_every=2)
    assert train(exp, progress=False)["step"] == 6
    assert [c.step for c in list_checkpoints(root)] == [2, 4, 6]
    assert not any(p.name.startswith(".") for p in root.iterdir())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(make_experiment, monkeypatch):
    from t2v_model.diffusion import GaussianDiffusion
    from t2v_train import TrainingError

    real, calls = GaussianDiffusion.training_loss, []

    def poisoned(self, *args, **kwargs):
        calls.append(1)
        loss = real(self, *args, **kwargs)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(GaussianDiffusion, "training_loss", poisoned)
    exp = make_experiment(steps=10, checkpoint_every=3)
    with pytest.raises(TrainingError, match=r"step 5: loss is nan; stopped \(last good checkpoint: .*step-000003\)"):
        train(exp, progress=False)
    assert [c.step for c in list_checkpoints(exp.out_dir / "checkpoints")] == [3]
    load_pretrained(exp.out_dir / "model")
