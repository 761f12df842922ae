import pytest

from t2v_data.experiment import load_yaml
from t2v_data.prepare_config import config_hash, prepare_config
from t2v_model.errors import ConfigError


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"^data\.shapes\.colours: unknown key"):
        prepare_config({"shapes": {"colours": ["red"]}})


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"^data\.frames: expected an integer"):
        prepare_config({"frames": "eight"})
    with pytest.raises(ConfigError, match=r"^data\.source: unknown 'youtube' \(known: shapes, digits, msrvtt, "):
        prepare_config({"source": "youtube"})
    with pytest.raises(ConfigError, match=r"^data\.shapes\.speeds\.fast: expected a number"):
        prepare_config({"shapes": {"speeds": {"fast": "quick"}}})
    with pytest.raises(ConfigError, match=r"^data\.shapes\.colors\[1\]: unknown value 'pink'"):
        prepare_config({"shapes": {"colors": ["red", "pink"]}})
    with pytest.raises(ConfigError, match=r"^data\.msrvtt\.videos_dir: required"):
        prepare_config({"source": "msrvtt"})


def test_holdout_is_checked():
    with pytest.raises(ConfigError, match=r"^data\.shapes\.holdout\[0\]\.hue: unknown attribute"):
        prepare_config({"shapes": {"holdout": [{"hue": "red"}]}})
    with pytest.raises(ConfigError, match=r"^data\.shapes\.holdout\[0\]\.color: 'pink'"):
        prepare_config({"shapes": {"holdout": [{"color": "pink"}]}})
    with pytest.raises(ConfigError, match=r"holds out every possible combination"):
        prepare_config({"shapes": {"colors": ["red"], "holdout": [{"color": "red"}]}})


def test_object_must_fit_the_canvas():
    with pytest.raises(ConfigError, match=r"^data\.shapes\.speeds: largest size"):
        prepare_config({"shapes": {"sizes": {"huge": 0.6}, "speeds": {"fast": 0.5}}})
    # the default digits section is validated even though the YAML does not mention it
    with pytest.raises(ConfigError, match=r"^data\.digits\.speeds"):
        prepare_config({"source": "digits", "digits": {"digit_size": 0.7}})


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
    cfg = prepare_config(raw["data"])
    assert (cfg.num_samples, cfg.shapes.motions, cfg.h) == (20, ["left", "right"], 32)
    other = prepare_config({**raw["data"], "workers": 2, "out_dir": "elsewhere"})
    assert config_hash(cfg, 3) == config_hash(other, 3)  # where and how fast do not change the output
    assert config_hash(cfg, 3) != config_hash(cfg, 4)
    changed = prepare_config({**raw["data"], "num_samples": 21})
    assert config_hash(cfg, 3) != config_hash(changed, 3)


def test_negative_limits_and_single_names_are_refused():
    with pytest.raises(ConfigError, match=r"^data\.folder\.limit: must be >= 0"):
        prepare_config({"source": "folder", "folder": {"dir": "x", "limit": -1}})
    with pytest.raises(ConfigError, match=r"^data\.msrvtt\.limit: must be >= 0"):
        prepare_config({"msrvtt": {"limit": -3}})
    with pytest.raises(ConfigError, match=r"^data\.digits\.color: unknown value 'pink'"):
        prepare_config({"source": "digits", "digits": {"color": "pink"}})


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(invalid continuation byte at byte 9\)"):
        load_yaml(p)
