"""Exact resume, atomic checkpoints (kill -9 mid-save), keep-last-K by step number, and a falling loss; fresh runs
set the old one aside; damaged checkpoint files are named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
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
    from t2v_model.errors import TrainingError

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


def test_fresh_run_moves_the_previous_run_aside(make_experiment, capsys):
    old = make_experiment(steps=3, checkpoint_every=1)
    train(old, progress=False)
    (old.out_dir / "eval").mkdir()
    (old.out_dir / "eval" / "results.json").write_text("{}")  # the evaluate stage's output of the old model
    (old.out_dir / "notes.txt").write_text("mine")  # not a run output: stays
    before = {p.relative_to(old.out_dir): p.read_bytes() for p in old.out_dir.rglob("*") if p.is_file()}
    capsys.readouterr()

    train(make_experiment(steps=2, checkpoint_every=1, resume="never"), progress=False)
    out = capsys.readouterr().out
    (aside,) = old.out_dir.glob("replaced-*")
    tensorboard = "tensorboard, " if (aside / "tensorboard").exists() else ""  # when tensorboard is installed
    assert f"moved the previous run's checkpoints, model, samples, metrics.jsonl, {tensorboard}eval to {aside}/" in out
    assert [c.step for c in list_checkpoints(old.out_dir / "checkpoints")] == [1, 2]
    assert [c.step for c in list_checkpoints(aside / "checkpoints")] == [1, 2, 3]
    for rel, data in before.items():  # every old file, byte for byte, in the folder it was moved to
        assert (old.out_dir / rel if rel.name == "notes.txt" else aside / rel).read_bytes() == data, rel
    assert not (old.out_dir / "eval").exists() and max(losses(old.out_dir)) == 2

    # a normal run continues the fresh run, not the discarded one
    assert train(make_experiment(steps=4, checkpoint_every=1), progress=False)["step"] == 4
    assert f"resumed from {old.out_dir / 'checkpoints' / 'step-000002'} (step 2)" in capsys.readouterr().out
    assert sorted(losses(old.out_dir)) == [1, 2, 3, 4] and len(list(old.out_dir.glob("replaced-*"))) == 1


def test_a_run_without_a_checkpoint_to_resume_keeps_the_earlier_metrics_aside(make_experiment, capsys):
    exp = make_experiment(steps=2, checkpoint_every=100)  # the final checkpoint only
    train(exp, progress=False)
    for ckpt in list_checkpoints(exp.out_dir / "checkpoints"):  # e.g. deleted by hand, or a run killed before one
        shutil.rmtree(ckpt.path)
    old_metrics = (exp.out_dir / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    train(make_experiment(steps=1, checkpoint_every=100), progress=False)
    (aside,) = exp.out_dir.glob("replaced-*")
    assert "no checkpoint to resume: moved the previous run's" in capsys.readouterr().out
    assert (aside / "metrics.jsonl").read_bytes() == old_metrics and max(losses(exp.out_dir)) == 1


@pytest.mark.parametrize("name", ["optimizer.pt", "model.safetensors", "ema.safetensors", "state.json",
                                  "rng-rank0.pt"])
def test_a_damaged_checkpoint_file_is_named_with_the_older_checkpoints(make_experiment, name):
    from t2v_train.checkpoint import ResumeError

    train(make_experiment(steps=2, checkpoint_every=1), progress=False)
    bad = step_dir(make_experiment().out_dir / "checkpoints", 2) / name
    bad.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(ResumeError) as e:
        train(make_experiment(steps=3), progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: corrupt (not ") and "weights_only" not in msg and "\n" not in msg
    assert msg.endswith("; older checkpoints: step-000001 (move step-000002 out of "
                        f"{bad.parent.parent} to resume from step-000001); or start over with --fresh "
                        "(train.resume=never)")


def test_checkpoint_files_follow_the_umask(make_experiment):
    old = os.umask(0o027)
    try:
        train(make_experiment(steps=1), progress=False)
    finally:
        os.umask(old)
    files = list(step_dir(make_experiment().out_dir / "checkpoints", 1).iterdir())
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o640" for f in files}
    assert "model.safetensors" in {f.name for f in files}


def test_a_torn_metrics_line_does_not_stop_the_resume(make_experiment):
    exp = make_experiment(steps=2, checkpoint_every=1)
    train(exp, progress=False)
    with open(exp.out_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.4')  # a process killed in the middle of writing a row
    assert train(make_experiment(steps=3, checkpoint_every=1), progress=False)["step"] == 3
    assert sorted(losses(exp.out_dir)) == [1, 2, 3]
    assert not list(exp.out_dir.glob(".metrics*"))


def test_the_resume_flag_resumes_even_when_the_config_says_never(shards, tiny_raw, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "pipelines"))
    import train as train_cli

    config = tmp_path / "exp.yaml"
    config.write_text(json.dumps(tiny_raw(shards, tmp_path / "run", steps=2, checkpoint_every=1, resume="never")))
    assert train_cli.main(["--config", str(config), "--quiet"]) == 0
    capsys.readouterr()
    assert train_cli.main(["--config", str(config), "--quiet", "--resume", "train.steps=3"]) == 0
    assert f"resumed from {tmp_path / 'run' / 'checkpoints' / 'step-000002'} (step 2)" in capsys.readouterr().out
    assert not list((tmp_path / "run").glob("replaced-*")) and sorted(losses(tmp_path / "run")) == [1, 2, 3]


def test_a_kill_while_pruning_or_replacing_never_leaves_a_half_checkpoint(tmp_path, monkeypatch):
    import t2v_train.checkpoint as ckpt

    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        d = step_dir(root, step)
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"weights")
        (d / "state.json").write_text(json.dumps({"step": step}))

    def killed_rmtree(path, ignore_errors=False):  # removes one file, then the process dies
        if Path(path).exists():
            (Path(path) / "model.safetensors").unlink(missing_ok=True)
            raise KeyboardInterrupt

    def whole():
        return all((c.path / "model.safetensors").is_file() for c in list_checkpoints(root))

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune(root, keep=2)
    assert [c.step for c in list_checkpoints(root)] == [2, 3] and whole()

    # the final save of a step that already has a checkpoint (e.g. a periodic save at the last step)
    monkeypatch.undo()
    tmp = ckpt.begin_save(root, 3)  # also removes what the killed prune left
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == [tmp.name]
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        ckpt.finish_save(tmp, root, 3, model=model, ema=model, optimizer=opt, scaler=None, state={}, keep=2)
    assert [c.step for c in list_checkpoints(root)] == [2, 3] and whole()
    assert (step_dir(root, 3) / "optimizer.pt").is_file()  # the new one


def test_resuming_on_shards_of_another_encoder_is_refused(make_experiment):
    from t2v_model.errors import TrainingError

    exp = make_experiment(steps=2, checkpoint_every=2)
    train(exp, progress=False)
    state_file = step_dir(exp.out_dir / "checkpoints", 2) / "state.json"
    state = json.loads(state_file.read_text())
    state["encoder"] = {**state["encoder"], "weights_hash": "0123456789abcdef"}  # e.g. the encoder was upgraded
    state_file.write_text(json.dumps(state))
    with pytest.raises(TrainingError, match=r"captions embedded by .*weights 0123456789ab.*were embedded by"):
        train(make_experiment(steps=4, checkpoint_every=2), progress=False)


def test_no_bare_step_rows_when_there_is_nothing_to_score(make_experiment, monkeypatch):
    import t2v_train.trainer as trainer

    monkeypatch.setattr(trainer, "attribute_space", lambda raw: None)  # as for MSR-VTT captions
    exp = make_experiment(steps=2, checkpoint_every=2)
    train(exp, progress=False)
    rows = read_metrics(exp.out_dir)
    assert rows and all(set(r) - {"step", "time"} for r in rows), rows
    assert (exp.out_dir / "samples" / "step-000002.gif").is_file()
