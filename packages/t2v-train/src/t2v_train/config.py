"""The `model:`, `train:` and `evaluate:` sections of an experiment config, as typed dataclasses.

    exp = load_experiment("configs/quickstart.yaml", ["train.lr=3e-4"])
    exp.train.lr, exp.model.unet.dim, exp.data_dir, exp.out_dir

Every key is validated by `t2v_model.schema.build`; errors are one-line `ConfigError`s naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from t2v_data.experiment import Paths, load_yaml, name_of, seed_of
from t2v_model.config import DiffusionConfig, TextEncoderInfo, UnetConfig, check_token_layer
from t2v_model.errors import ConfigError
from t2v_model.schema import build
from t2v_model.text_encoder import PACKAGED_ID

from .metrics import check_loggers


def check_device(name: str) -> None:
    """A device name torch can parse ("auto" = the trainer's choice); whether CUDA is there is checked on use."""
    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: expected auto or a torch device (cpu, cuda, cuda:N, mps), got {name!r}") from None


@dataclass
class TrainConfig:
    data_dir: str | None = None  # pre-embedded shards; None = embed.out_dir or data/<name>/embedded
    out_dir: str | None = None  # checkpoints, samples, metrics, exported model; None = runs/<name>
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU
    tf32: bool = True
    compile: bool = False
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process and micro-step
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float | None = 1.0
    ema_decay: float = 0.995
    ema_start: int = 0  # before this step the EMA copies the weights
    ema_every: int = 1  # the decay applies per update: the average spans ~ema_every / (1 - ema_decay) steps
    num_workers: int = 0  # DataLoader worker processes per rank
    shuffle_buffer: int = 256
    # random horizontal flip; captions are pre-embedded so "left"/"right" cannot be swapped: only for data whose
    # captions do not name a horizontal direction (MSR-VTT), never for the synthetic shapes
    hflip: bool = False
    # the objective: how the diffusion model is trained (the checkpoint's card keeps only what sampling needs)
    loss: Literal["l1", "l2"] = "l2"
    min_snr_gamma: float | None = None  # e.g. 5.0 turns on min-SNR-gamma loss weighting (Hang et al. 2023)
    null_cond_prob: float = 0.1  # classifier-free guidance: fraction of training samples with the null caption
    # fraction of samples whose t is drawn from the last 1% of the schedule (GaussianDiffusion.sample_timesteps):
    # the noise levels where sampling decides where the caption puts things
    prior_fraction: float = 0.0
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: Literal["auto", "never"] = "auto"  # auto: continue from the newest checkpoint in out_dir/checkpoints
    log_every: int = 10
    val_every: int = 500  # 0 = never
    val_batches: int = 4
    sample_every: int = 500  # 0 = only at the end
    sample_count: int = 8  # videos in the sample grid (the first val clips' captions)
    sample_steps: int = 25
    sample_guidance: float = 3.0
    # trackers besides metrics.jsonl: tensorboard (runs/<name>/tensorboard), wandb (project wandb_project or "t2v")
    loggers: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    wandb_project: str | None = None
    sample_sampler: Literal["ddim", "ddpm", "dpm++"] = "ddim"  # the previews' sampler (t2v_model.pipeline.SAMPLERS)
    # anneal prior_fraction linearly to this value by the last step (null = constant): the direction of motion is
    # learned from the high-noise samples early, the shapes' detail from the uniform ones later
    prior_fraction_end: float | None = None
    # the first this many steps train on clips average-pooled to half the height and width: a ~3x cheaper step that
    # learns colour, layout and motion, leaving the full-size steps for the shapes' detail (low-resolution
    # pretraining, as Stable Diffusion's 256 -> 512; docs/model.md, "Half-size steps first")
    half_res_steps: int = 0
    # their noise at this times the SNR of t: 4 = what the 2x2-averaged full-size x_t shows (the net learns the
    # direction of motion where it will need it); 1 = the plain schedule (docs/model.md, "Half-size steps first")
    half_res_snr_scale: float = 4.0
    # where: "prior" = only at the prior samples' t (the last 1%, where the direction is decided; every other t on the
    # plain schedule, which keeps the shapes), "all" = every t
    half_res_snr_where: Literal["prior", "all"] = "prior"

    def validate(self) -> None:
        check_device(self.device)
        check_loggers(self.loggers)
        for key in ("steps", "batch_size", "grad_accum", "ema_every", "checkpoint_every", "keep_checkpoints",
                    "log_every", "val_batches", "sample_count", "sample_steps", "shuffle_buffer"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "ema_start", "num_workers", "val_every", "sample_every", "half_res_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ConfigError(f"lr: must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay: must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad_clip: must be positive or null, got {self.grad_clip}")
        for key in ("null_cond_prob", "prior_fraction"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be in [0, 1), got {getattr(self, key)}")
        if not self.half_res_snr_scale > 0:
            raise ConfigError(f"half_res_snr_scale: must be positive, got {self.half_res_snr_scale}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ConfigError(f"min_snr_gamma: must be positive or null, got {self.min_snr_gamma}")
        if self.prior_fraction_end is not None and not 0 <= self.prior_fraction_end < 1:
            raise ConfigError(f"prior_fraction_end: must be in [0, 1) or null, got {self.prior_fraction_end}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas: must be two numbers in [0, 1), got {list(self.betas)}")


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # inference checkpoint dir; None = <train.out_dir>/model
    num_prompts: int = 32  # evaluation prompts (drawn from data.shapes.holdout's combinations when set)
    seed: int = 0
    steps: int = 25
    guidance: float = 3.0
    sampler: Literal["ddim", "ddpm", "dpm++"] = "ddim"  # dpm++ = DPM-Solver++(2M); DDIM here runs with eta 0
    batch_size: int = 16
    device: str = "auto"
    val_batches: int = 8  # val-loss batches of train.batch_size
    targets: dict[str, float] = field(default_factory=lambda: {"color": 0.9, "motion": 0.7})  # shown as pass/fail
    # real video: the clips and captions scored (the test split of MSR-VTT is never trained on)
    split: Literal["val", "test"] = "val"
    fvd: bool = True
    fvd_weights: str | None = None  # the I3D TorchScript file; null = ~/.cache/t2v/fvd/, downloaded once online
    clip_model: str | None = "openai/clip-vit-base-patch32"  # hub id or local dir; null = no CLIP score

    def validate(self) -> None:
        check_device(self.device)
        for key, value in self.targets.items():
            if key not in ("color", "motion", "shape") or not 0 <= value <= 1:
                raise ConfigError(f"targets.{key}: expected color/motion/shape with a fraction in [0, 1], got {value}")
        for key in ("num_prompts", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.val_batches < 0:
            raise ConfigError(f"val_batches: must be >= 0, got {self.val_batches}")
        if self.guidance < 0:
            raise ConfigError(f"guidance: must be >= 0, got {self.guidance}")


@dataclass
class ModelSection:
    unet: UnetConfig = field(default_factory=UnetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


@dataclass
class Experiment:
    name: str
    seed: int
    model: ModelSection
    train: TrainConfig
    evaluate: EvalConfig
    encoder_id: str  # the text encoder the embed section names; shards must have been embedded with it
    encoder_max_length: int  # and the caption length it cuts at (embed.max_length)
    data_dir: Path
    out_dir: Path
    raw: dict[str, Any]  # the whole YAML (other stages' sections unparsed)
    encoder_token_layer: int = -1  # and the layer its caption tokens come from (embed.token_layer)


def load_experiment(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                    raw: dict[str, Any] | None = None) -> Experiment:
    """Parse the sections the trainer and evaluator own from a YAML file (or an already loaded `raw` dict)."""
    raw = load_yaml(path, overrides) if raw is None else raw
    name, seed = name_of(raw), seed_of(raw)
    model = build(ModelSection, raw.get("model"), "model")  # names model.unet.<key> / model.diffusion.<key>
    train = build(TrainConfig, raw.get("train"), "train")
    evaluate = build(EvalConfig, raw.get("evaluate"), "evaluate")
    embed = raw.get("embed") or {}
    encoder_id = embed.get("encoder") or PACKAGED_ID
    max_length = embed.get("max_length", TextEncoderInfo.max_length)
    token_layer = embed.get("token_layer", TextEncoderInfo.token_layer)
    try:
        check_token_layer(token_layer)
    except ConfigError as e:
        raise ConfigError(f"embed.{e}") from None
    paths = Paths(raw)
    return Experiment(name, seed, model, train, evaluate, encoder_id, max_length, paths.train_data, paths.run, raw,
                      encoder_token_layer=token_layer)
