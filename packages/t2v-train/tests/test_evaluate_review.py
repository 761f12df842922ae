"""Evaluation protocol review: what `evaluate` claims about its prompts and numbers matches what it measured.

A tiny untrained checkpoint (16x16x4, the packaged MiniLM encoder, offline) is scored: the accuracies are
meaningless, the labels, warnings and the val loss's data are what is checked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from t2v_data.prepare_config import prepare_config
from t2v_data.shapes import ShapesGenerator
from t2v_model.checkpoint import save_pretrained
from t2v_model.config import DataGeometry, DiffusionConfig, ModelCard, TextEncoderInfo, UnetConfig
from t2v_model.unet import Unet3D
from t2v_train.adherence import score
from t2v_train.config import load_experiment
from t2v_train.evaluate import evaluate, format_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = {"shapes": ["circle", "square", "triangle", "star"], "colors": ["red", "green", "blue", "yellow"],
          "motions": ["left", "right", "up", "down"], "speeds": {"fast": 0.5}, "sizes": {"small": 0.3, "large": 0.4},
          "templates": ["a {color} {shape} {motion}", "a {size} {color} {shape} {motion}"]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    unet = UnetConfig(dim=8, dim_mults=[1, 2], cond_dim=384, attn_heads=2, attn_dim_head=8,
                      use_sparse_linear_attn=False)
    card = ModelCard(diffusion=DiffusionConfig(timesteps=50), text_encoder=TextEncoderInfo(),
                     data=DataGeometry(frames=4, height=16, width=16, channels=3, fps=4))
    return save_pretrained(tmp_path_factory.mktemp("ckpt") / "model", Unet3D(unet), card)


def experiment(tmp_path: Path, data_dir: Path | None = None, data: dict | None = None, **shapes):
    raw = {"name": "review", "seed": 0,
           "data": {"source": "shapes", "frames": 4, "size": 16, "shapes": {**SHAPES, **shapes}, **(data or {})},
           "model": {"unet": {"dim": 8, "dim_mults": [1, 2], "cond_dim": 384, "attn_heads": 2, "attn_dim_head": 8,
                              "use_sparse_linear_attn": False}, "diffusion": {"timesteps": 50}},
           "train": {"data_dir": str(data_dir or tmp_path / "no-data"), "out_dir": str(tmp_path / "run"),
                     "batch_size": 4},
           # 5 prompts in batches of 2: the last batch is short
           "evaluate": {"num_prompts": 5, "steps": 2, "batch_size": 2, "val_batches": 1, "device": "cpu"}}
    return load_experiment(None, raw=raw)


def test_score_counts_each_attribute_over_the_prompts_that_name_it():
    cfg = prepare_config({"frames": 8, "size": 32, "shapes": {"motions": ["left", "right"]}})
    gen = ShapesGenerator(cfg, 0)
    clips = [gen.clip(i) for i in range(2)]
    videos = torch.from_numpy(np.stack([c[0] for c in clips]))
    attrs = [dict(clips[0][2]), {k: v for k, v in clips[1][2].items() if k != "shape"}]  # 2nd prompt names no shape
    rows, acc = score(videos, attrs)
    assert rows[0]["ok"] == {"color": True, "motion": True, "shape": True}
    # the clip without a shape in its prompt is no shape miss (was 0.5)
    assert acc == {"color": 1.0, "motion": 1.0, "shape": 1.0}


def test_holdout_of_an_attribute_the_prompt_does_not_name_is_not_called_held_out(checkpoint, tmp_path, capsys):
    # templates[0] never says the size: "held-out" small red prompts read exactly like training captions
    result = evaluate(experiment(tmp_path, holdout=[{"size": "small", "color": "red"}]), checkpoint, progress=False)
    err = capsys.readouterr().err
    assert "also captions training clips" in err and "not unseen" in err
    assert result["held_out"] is False and result["captions_seen_in_training"] == 5
    table = format_table(result)
    assert "5 held-out-combination (5 of 5 captions also caption training clips, so not unseen) prompts" in table
    assert "in-distribution" not in table


def test_real_holdout_is_held_out_with_chance_levels_and_distinct_count(checkpoint, tmp_path, capsys):
    result = evaluate(experiment(tmp_path, holdout=[{"color": "red", "shape": "star"}]), checkpoint, progress=False)
    err = capsys.readouterr().err
    assert "also captions training clips" not in err
    assert result["held_out"] is True and result["captions_seen_in_training"] == 0
    assert len(result["videos"]) == 5 and result["prompts"] == 5
    # red stars x 4 directions x 2 sizes, captions without the size: at most 4 distinct prompts
    assert result["distinct_captions"] <= 4
    assert result["chance"] == {"color": 0.25, "motion": 0.25, "shape": 0.25}
    table = format_table(result)
    # no shards to compare the data config with (train.data_dir does not exist): said, not assumed
    assert (f"5 held-out (unverified: no training shards to check the data config against) prompts "
            f"({result['distinct_captions']} distinct captions)") in table
    assert "chance" in table.splitlines()[1] and "25.0%" in table


def test_val_loss_is_not_taken_on_shards_of_another_geometry_or_encoder(checkpoint, shards, tmp_path, capsys):
    # the conftest shards: 4x8x8 clips, 16-d caption embeddings, another data config (hash "test")
    result = evaluate(experiment(tmp_path, data_dir=shards), checkpoint, progress=False)  # was a ValueError
    err = capsys.readouterr().err
    assert "warning: no val loss: the shards in" in err and "4x8x8x3" in err and "4x16x16x3" in err
    assert "were prepared from another data config" in err
    assert result["val_loss"] is None and result["data_config_matches_shards"] is False
    assert "n/a" in format_table(result)


def test_a_damaged_val_shard_costs_the_val_loss_not_the_evaluation(checkpoint, tmp_path, capsys):
    from t2v_data.prepare import run_prepare
    from t2v_data.prepare_config import prepare_config_from_experiment
    from t2v_textenc import EmbedConfig, run_embed

    data = {"num_samples": 24, "val_fraction": 0.25, "out_dir": str(tmp_path / "raw")}
    exp = experiment(tmp_path, data_dir=tmp_path / "emb", data=data)
    run_prepare(prepare_config_from_experiment(exp.raw), seed=0, progress=False)
    run_embed(EmbedConfig(in_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "emb"), cache_dir=None), progress=False)
    result = evaluate(exp, checkpoint, progress=False)
    assert result["val_loss"] is not None and result["val_clips"] == 4 and result["data_config_matches_shards"]
    assert "warning" not in capsys.readouterr().err

    val = tmp_path / "emb" / "val-000000.tar"
    val.write_bytes(val.read_bytes()[: val.stat().st_size // 2])
    result = evaluate(exp, checkpoint, progress=False)  # was: the trainer's DataError after all the sampling
    err = capsys.readouterr().err
    assert err.startswith("warning: no val loss: ") and "val-000000.tar: unreadable tar shard" in err
    assert result["val_loss"] is None and len(result["videos"]) == 5 and (tmp_path / "run" / "eval").is_dir()



def test_the_shape_confusion_table_counts_what_each_asked_shape_was_read_as():
    from t2v_train.adherence import confusion

    rows = [{"want": {"shape": w}, "got": {"shape": g}} for w, g in
            [("circle", "circle"), ("circle", "square"), ("square", "square"), ("star", None), ("star", "triangle")]]
    table = confusion(rows, "shape", ["circle", "square", "triangle", "star"])
    assert table["circle"] == {"circle": 1, "square": 1, "triangle": 0, "star": 0, "None": 0}
    assert table["star"] == {"circle": 0, "square": 0, "triangle": 1, "star": 0, "None": 1}
    assert sum(table["triangle"].values()) == 0
    result = {"kind": "adherence", "checkpoint": "c", "prompts": 5, "sampler": "ddim", "steps": 2, "guidance": 3.0,
              "seconds": 1.0, "accuracy": {"shape": 0.4}, "targets": {}, "shape_confusion": table, "val_loss": None,
              "val_clips": 0, "motion_energy": 1.0, "background_std": 0.0}
    lines = format_table(result).splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("shape read as"))
    assert lines[header].split() == ["shape", "read", "as", "circle", "square", "triangle", "star", "none"]
    assert lines[header + 1].split() == ["circle", "1", "1", "0", "0", "0"]
    assert lines[header + 3].split() == ["star", "0", "0", "1", "0", "1"]  # the triangle row, never asked: left out
