"""EmbedConfig from an experiment config, the pipelines/embed.py entry point and the cache's token rows."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from t2v_data.experiment import load_yaml
from t2v_model.errors import ConfigError
from t2v_textenc import CachedEmbedding, EmbeddingCache, embed_config_from_experiment

REPO = Path(__file__).resolve().parents[3]


def test_defaults_come_from_data_section_and_name():
    cfg = embed_config_from_experiment({"name": "exp", "data": {"out_dir": "data/exp/raw"}})
    assert (cfg.in_dir, cfg.out_dir, cfg.encoder, cfg.tokens, cfg.max_length) == (
        "data/exp/raw", "data/exp/embedded", None, False, 77)
    cfg = embed_config_from_experiment({"name": "exp", "embed": {"in_dir": "x", "out_dir": "y", "tokens": True}})
    assert (cfg.in_dir, cfg.out_dir, cfg.tokens) == ("x", "y", True)


def test_quickstart_config_has_a_valid_embed_section():
    cfg = embed_config_from_experiment(load_yaml(REPO / "configs/quickstart.yaml", ["embed.batch_size=16"]))
    assert cfg.batch_size == 16 and cfg.out_dir == "data/quickstart/embedded"


@pytest.mark.parametrize("section, message", [
    ({"colour": 1}, "embed.colour: unknown key"),
    ({"max_length": 1}, "embed.max_length: must be >= 2"),
    ({"dtype": "bfloat16"}, "embed.dtype: bfloat16 needs a cuda device"),
    ({"tokens": "yes"}, "embed.tokens: expected true/false"),
    ({"in_dir": "same", "out_dir": "same"}, "embed.out_dir: must differ"),
])
def test_bad_values_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        embed_config_from_experiment({"name": "exp", "embed": section})


def test_cache_row_without_tokens_is_a_miss_in_token_mode(tmp_path):
    cache = EmbeddingCache(tmp_path, "enc@hash", 77, 4)
    cache.put_many({"a": CachedEmbedding(np.arange(4, dtype=np.float16))})
    assert cache.missing(["a", "b"], tokens=False) == ["b"]
    assert cache.missing(["a", "b"], tokens=True) == ["a", "b"]
    cache.put_many({"a": CachedEmbedding(np.ones(4, np.float16), np.full((3, 4), 2, np.float16))})
    cache.close()
    reopened = EmbeddingCache(tmp_path, "enc@hash", 77, 4)  # persisted on disk
    got = reopened.get_many(["a"], tokens=True)["a"]
    assert got.pooled.tolist() == [1, 1, 1, 1] and got.tokens.shape == (3, 4)
    assert EmbeddingCache(tmp_path, "other@hash", 77, 4).missing(["a"], tokens=False) == ["a"]
    assert EmbeddingCache(tmp_path, "enc@hash", 32, 4).missing(["a"], tokens=False) == ["a"]


def load_pipeline():
    spec = importlib.util.spec_from_file_location("pipeline_embed", REPO / "pipelines/embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pipeline_cli_runs_and_reports(raw_dir, tmp_path, capsys, encoder):
    config = tmp_path / "exp.yaml"
    config.write_text(f"name: exp\ndata:\n  out_dir: {raw_dir}\nembed:\n  cache_dir: {tmp_path / 'cache'}\n")
    out = tmp_path / "emb"
    assert load_pipeline().main(["--config", str(config), f"embed.out_dir={out}", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "5 distinct, 5 encoded" in printed and "3 rejected" in printed
    assert json.loads((out / "manifest.json").read_text())["text_encoder"]["dim"] == 384


def test_pipeline_cli_one_line_error_for_missing_input(tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text(f"name: exp\ndata:\n  out_dir: {tmp_path / 'nowhere'}\n")
    # exit 1: the command is fine, its input is not (exit 2 is kept for a bad command line / config)
    assert load_pipeline().main(["--config", str(config), f"embed.out_dir={tmp_path / 'o'}", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "nowhere/manifest.json: no manifest" in err
    assert load_pipeline().main(["--config", str(config), "embed.batch_size=0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("config error: embed.batch_size")
