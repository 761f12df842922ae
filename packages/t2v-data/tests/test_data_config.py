import pytest
from t2v_data.config import ConfigError, build, load_yaml
from t2v_data.prepare_config import PrepareConfig, config_hash


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"^data\.shapes\.colours: unknown key"):
        build(PrepareConfig, {"shapes": {"colours": ["red"]}}, "data")


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"^data\.frames: expected an integer"):
        build(PrepareConfig, {"frames": "eight"}, "data")
    with pytest.raises(ConfigError, match=r"^data\.source: must be one of"):
        build(PrepareConfig, {"source": "youtube"}, "data")
    with pytest.raises(ConfigError, match=r"^data\.shapes\.speeds\.fast: expected a number"):
        build(PrepareConfig, {"shapes": {"speeds": {"fast": "quick"}}}, "data")
    with pytest.raises(ConfigError, match=r"^data\.shapes\.colors\[1\]: unknown value 'pink'"):
        build(PrepareConfig, {"shapes": {"colors": ["red", "pink"]}}, "data")
    with pytest.raises(ConfigError, match=r"^data\.msrvtt\.videos_dir: required"):
        build(PrepareConfig, {"source": "msrvtt"}, "data")


def test_holdout_is_checked():
    with pytest.raises(ConfigError, match=r"^data\.shapes\.holdout\[0\]\.hue: unknown attribute"):
        build(PrepareConfig, {"shapes": {"holdout": [{"hue": "red"}]}}, "data")
    with pytest.raises(ConfigError, match=r"^data\.shapes\.holdout\[0\]\.color: 'pink'"):
        build(PrepareConfig, {"shapes": {"holdout": [{"color": "pink"}]}}, "data")
    with pytest.raises(ConfigError, match=r"holds out every possible combination"):
        build(PrepareConfig, {"shapes": {"colors": ["red"], "holdout": [{"color": "red"}]}}, "data")


def test_object_must_fit_the_canvas():
    with pytest.raises(ConfigError, match=r"^data\.shapes\.speeds: largest size"):
        build(PrepareConfig, {"shapes": {"sizes": {"huge": 0.6}, "speeds": {"fast": 0.5}}}, "data")
    # the default digits section is validated even though the YAML does not mention it
    with pytest.raises(ConfigError, match=r"^data\.digits\.speeds"):
        build(PrepareConfig, {"source": "digits", "digits": {"digit_size": 0.7}}, "data")


def test_a_misspelt_top_level_section_is_refused(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("name: x\ndata:\n  frames: 8\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: trian: unknown top-level section"):
        load_yaml(p, ["trian.steps=10"])
    p.write_text("name: x\nmodle:\n  unet: {}\n")
    with pytest.raises(ConfigError, match=r"modle: unknown top-level section"):
        load_yaml(p)


def test_yaml_overrides_and_hash(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("seed: 3\ndata:\n  frames: 8\n  size: 32\n")
    raw = load_yaml(p, ["data.num_samples=20", "data.shapes.motions=[left,right]"])
    cfg = build(PrepareConfig, raw["data"], "data")
    assert (cfg.num_samples, cfg.shapes.motions, cfg.geometry["height"]) == (20, ["left", "right"], 32)
    other = build(PrepareConfig, {**raw["data"], "workers": 2, "out_dir": "elsewhere"}, "data")
    assert config_hash(cfg, 3) == config_hash(other, 3)  # where and how fast do not change the output
    assert config_hash(cfg, 3) != config_hash(cfg, 4)
    changed = build(PrepareConfig, {**raw["data"], "num_samples": 21}, "data")
    assert config_hash(cfg, 3) != config_hash(changed, 3)


def test_negative_limits_and_single_names_are_refused():
    with pytest.raises(ConfigError, match=r"^data\.folder\.limit: must be >= 0"):
        build(PrepareConfig, {"source": "folder", "folder": {"dir": "x", "limit": -1}}, "data")
    with pytest.raises(ConfigError, match=r"^data\.msrvtt\.limit: must be >= 0"):
        build(PrepareConfig, {"msrvtt": {"limit": -3}}, "data")
    with pytest.raises(ConfigError, match=r"^data\.digits\.color: unknown value 'pink'"):
        build(PrepareConfig, {"source": "digits", "digits": {"color": "pink"}}, "data")
