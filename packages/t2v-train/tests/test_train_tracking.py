"""train.loggers: TensorBoard gets every metrics row and the preview grids; W&B the same through its API (a stub
records the calls; the real package, offline, where it is installed); a tracker that is not installed is refused
before training."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pytest

from t2v_model.errors import ConfigError
from t2v_train import load_experiment, train


def test_tensorboard_gets_losses_lr_throughput_val_loss_and_previews(shards, tiny_raw, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = tiny_raw(shards, tmp_path / "run", steps=4, val_every=2, sample_every=2, log_every=1,
                   loggers=["tensorboard"])
    train(load_experiment(None, raw=raw), progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"loss", "loss_avg", "lr", "steps_per_s", "samples_per_s", "val_loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val_loss")] == [2, 4]
    assert [e.step for e in events.Images("samples")] == [2, 4]


@pytest.fixture
def wandb_stub(monkeypatch):
    calls = []
    stub = types.ModuleType("wandb")
    stub.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

    class Run:
        def log(self, data, step):
            calls.append(("log", step, sorted(data)))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    stub.init = init
    stub.util = types.SimpleNamespace(generate_id=lambda: "run123")
    stub.Video = lambda path, caption: ("video", path)
    stub.Image = lambda array, caption: ("image", array.shape)
    monkeypatch.setitem(sys.modules, "wandb", stub)
    return calls


def test_wandb_gets_every_row_and_the_previews_and_resumes_the_same_run(shards, tiny_raw, tmp_path, wandb_stub):
    raw = tiny_raw(shards, tmp_path / "run", steps=2, val_every=2, sample_every=2, log_every=1, loggers=["wandb"],
                   wandb_project="mine")
    train(load_experiment(None, raw=raw), progress=False)
    init = wandb_stub[0]
    assert init[0] == "init" and init[1]["project"] == "mine" and init[1]["id"] == "run123"
    assert init[1]["resume"] == "allow" and init[1]["config"]["train"]["steps"] == 2
    logged = [c for c in wandb_stub if c[0] == "log"]
    assert ("log", 1, ["loss", "loss_avg", "lr", "samples_per_s", "steps_per_s", "time"]) in logged
    assert ("log", 2, ["val_loss"]) in logged and ("log", 2, ["samples", "samples_sheet"]) in logged
    assert wandb_stub[-1] == ("finish",)
    assert (tmp_path / "run" / "wandb-run-id").read_text() == "run123"
    wandb_stub.clear()
    raw["train"]["steps"] = 3
    train(load_experiment(None, raw=raw), progress=False)  # resumed: the same W&B run goes on
    assert wandb_stub[0][1]["id"] == "run123"


def test_wandb_for_real_offline(shards, tiny_raw, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    raw = tiny_raw(shards, tmp_path / "run", steps=2, sample_every=2, loggers=["wandb"])
    train(load_experiment(None, raw=raw), progress=False)
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_a_tracker_that_is_not_installed_is_refused_before_training(shards, tiny_raw, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^train.loggers: wandb is not installed; `uv sync --extra wandb` adds it$"):
        load_experiment(None, raw=tiny_raw(shards, tmp_path / "run", loggers=["wandb"]))
