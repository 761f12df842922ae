"""`data:` section of an experiment config: the typed `PrepareConfig` and its per-source sub-configs."""

from __future__ import annotations

import hashlib
import itertools
import json
import string
from dataclasses import dataclass, field
from typing import Any, Literal

from .config import ConfigError, build, to_dict
from .palette import BACKGROUNDS, COLORS, contrasts

SHAPES = ("circle", "square", "triangle", "star")
DIRECTIONS = ("left", "right", "up", "down", "up_left", "up_right", "down_left", "down_right")
MOTIONS = DIRECTIONS + ("grow", "shrink", "rotate", "bounce")
ATTRIBUTE_KEYS = ("shape", "color", "motion", "speed", "size", "background")
TEMPLATE_FIELDS = {"shape", "color", "motion", "speed", "size", "background"}

DEFAULT_TEMPLATES = [
    "a {color} {shape} {motion} on a {background} background",
    "a {size} {color} {shape} {motion}",
    "a {color} {shape} {motion} {speed}",
]

MAX_FILL = 0.92  # object extent + travel may use at most this fraction of the canvas side


@dataclass
class ShapesConfig:
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    colors: list[str] = field(default_factory=lambda: list(COLORS))
    backgrounds: list[str] = field(default_factory=lambda: ["black"])
    motions: list[str] = field(default_factory=lambda: list(MOTIONS))
    # distance travelled over the whole clip, as a fraction of the canvas side (rotation: 240 deg per 1.0)
    speeds: dict[str, float] = field(default_factory=lambda: {"slow": 0.3, "fast": 0.5})
    # object extent (bounding box side when upright) as a fraction of the canvas side
    sizes: dict[str, float] = field(default_factory=lambda: {"small": 0.32, "large": 0.42})
    # attribute combinations never generated, e.g. [{color: red, shape: star}, {color: blue, motion: left}]
    holdout: list[dict[str, str]] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    captions_per_clip: int = 1
    antialias: bool = True

    def validate(self) -> None:
        _check_names("shapes", self.shapes, SHAPES)
        _check_names("colors", self.colors, COLORS)
        _check_names("backgrounds", self.backgrounds, BACKGROUNDS)
        _check_names("motions", self.motions, MOTIONS)
        _check_fractions("speeds", self.speeds)
        _check_fractions("sizes", self.sizes)
        if max(self.sizes.values()) + max(self.speeds.values()) > MAX_FILL:
            raise ConfigError(
                f"speeds: largest size + largest speed must be <= {MAX_FILL} of the canvas "
                f"so the object never leaves it, got {max(self.sizes.values())} + {max(self.speeds.values())}"
            )
        if not any(contrasts(c, b) for c in self.colors for b in self.backgrounds):
            raise ConfigError("backgrounds: every colour is too close to every background")
        allowed = {
            "shape": self.shapes,
            "color": self.colors,
            "motion": self.motions,
            "speed": list(self.speeds),
            "size": list(self.sizes),
            "background": self.backgrounds,
        }
        for i, combo in enumerate(self.holdout):
            if not combo:
                raise ConfigError(f"holdout[{i}]: empty combination would hold out everything")
            for key, value in combo.items():
                if key not in allowed:
                    raise ConfigError(f"holdout[{i}].{key}: unknown attribute (known: {', '.join(ATTRIBUTE_KEYS)})")
                if value not in allowed[key]:
                    raise ConfigError(f"holdout[{i}].{key}: {value!r} is not in shapes.{key}s")
        if not self.templates:
            raise ConfigError("templates: need at least one caption template")
        for i, t in enumerate(self.templates):
            names = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
            if names - TEMPLATE_FIELDS:
                raise ConfigError(
                    f"templates[{i}]: unknown field {{{sorted(names - TEMPLATE_FIELDS)[0]}}} "
                    f"(known: {', '.join(sorted(TEMPLATE_FIELDS))})"
                )
            if not {"color", "shape", "motion"} <= names:
                raise ConfigError(f"templates[{i}]: must mention {{color}}, {{shape}} and {{motion}}")
        if not 1 <= self.captions_per_clip <= len(self.templates):
            raise ConfigError(f"captions_per_clip: must be between 1 and {len(self.templates)} (number of templates)")
        if not any(is_valid_combo(c, self) for c in all_combos(self)):
            raise ConfigError("holdout: holds out every possible combination")


@dataclass
class DigitsConfig:
    # folder with MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]);
    # None = scikit-learn's bundled 8x8 digits, upscaled (offline)
    mnist_dir: str | None = None
    motions: list[str] = field(default_factory=lambda: list(DIRECTIONS) + ["bounce"])
    speeds: dict[str, float] = field(default_factory=lambda: {"slow": 0.3, "fast": 0.5})
    digit_size: float = 0.42  # digit box side as a fraction of the canvas side (27 px on 64)
    color: str = "white"
    background: str = "black"

    def validate(self) -> None:
        _check_names("motions", self.motions, DIRECTIONS + ("bounce",))
        _check_fractions("speeds", self.speeds)
        if not 0.1 <= self.digit_size <= 0.8:
            raise ConfigError(f"digit_size: must be in [0.1, 0.8], got {self.digit_size}")
        if self.digit_size + max(self.speeds.values()) > MAX_FILL:
            raise ConfigError(f"speeds: digit_size + largest speed must be <= {MAX_FILL}")
        _check_name("color", self.color, COLORS)
        _check_name("background", self.background, BACKGROUNDS)


@dataclass
class MsrvttConfig:
    videos_dir: str = ""  # folder holding video0.mp4, video1.mp4, ...
    annotations: str = ""  # the official train_val_videodatainfo.json
    limit: int = 0  # at most this many videos (0 = all)

    def validate(self) -> None:
        _check_limit(self.limit)


@dataclass
class FolderConfig:
    dir: str = ""  # *.mp4|*.gif|*.webm, each with a same-stem .txt (one caption per non-empty line)
    limit: int = 0  # at most this many videos (0 = all)

    def validate(self) -> None:
        _check_limit(self.limit)


@dataclass
class PrepareConfig:
    source: Literal["shapes", "digits", "msrvtt", "folder"] = "shapes"
    out_dir: str = "data/raw"
    num_samples: int = 1000  # synthetic sources (shapes, digits)
    frames: int = 8
    size: int = 32  # square side; height/width override it
    height: int | None = None
    width: int | None = None
    fps: int = 8
    # video files: "spread" = frames evenly over the whole clip; "window" = consecutive frames at `fps`
    # from the middle of the clip
    sampling: Literal["spread", "window"] = "spread"
    val_fraction: float = 0.05
    workers: int = 1
    shard_max_samples: int = 500
    shard_max_bytes: int = 256 * 1024 * 1024
    keep_mp4: bool = False  # also store the original encoded .mp4 as `video.mp4` (video files only)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    digits: DigitsConfig = field(default_factory=DigitsConfig)
    msrvtt: MsrvttConfig = field(default_factory=MsrvttConfig)
    folder: FolderConfig = field(default_factory=FolderConfig)

    @property
    def h(self) -> int:
        return self.height or self.size

    @property
    def w(self) -> int:
        return self.width or self.size

    @property
    def geometry(self) -> dict[str, int]:
        return {"frames": self.frames, "height": self.h, "width": self.w, "channels": 3, "fps": self.fps}

    def validate(self) -> None:
        if self.frames < 2:
            raise ConfigError(f"frames: need at least 2, got {self.frames}")
        for key in ("size", "height", "width"):
            v = getattr(self, key)
            if v is not None and v < 16:
                raise ConfigError(f"{key}: must be >= 16 pixels, got {v}")
        for key in ("fps", "workers", "shard_max_samples", "shard_max_bytes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.source in ("shapes", "digits") and self.num_samples < 1:
            raise ConfigError(f"num_samples: must be >= 1, got {self.num_samples}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if not self.out_dir:
            raise ConfigError("out_dir: must not be empty")
        if self.source in ("shapes", "digits", "msrvtt", "folder"):  # defaults are not built from YAML: check here too
            try:
                getattr(self, self.source).validate()
            except ConfigError as e:
                raise ConfigError(f"{self.source}.{e}") from None
        if self.source == "msrvtt":
            for key in ("videos_dir", "annotations"):
                if not getattr(self.msrvtt, key):
                    raise ConfigError(f"msrvtt.{key}: required when source is msrvtt")
        if self.source == "folder" and not self.folder.dir:
            raise ConfigError("folder.dir: required when source is folder")


def prepare_config_from_experiment(raw: dict[str, Any], workers: int | None = None) -> PrepareConfig:
    """The `data:` section of a whole experiment config, validated; `out_dir` defaults to data/<name>/raw, where the
    embed stage looks for it (t2v_textenc.embed_config_from_experiment). `workers` overrides data.workers."""
    data = raw.get("data") or {}
    if isinstance(data, dict):  # else build() names the bad section
        data = dict(data)
        if workers is not None:
            data["workers"] = workers
        if data.get("out_dir") is None and isinstance(raw.get("name"), str):
            data["out_dir"] = f"data/{raw['name']}/raw"
    return build(PrepareConfig, data, "data")


def config_hash(cfg: PrepareConfig, seed: int) -> str:
    """sha256 of the canonical JSON of everything that changes the output (not out_dir/workers, nor the
    sections of other sources)."""
    d: dict[str, Any] = to_dict(cfg)
    for key in ("out_dir", "workers", "shapes", "digits", "msrvtt", "folder"):
        d.pop(key)
    if cfg.source in ("shapes", "digits", "msrvtt", "folder"):
        d[cfg.source] = to_dict(getattr(cfg, cfg.source))
    d["seed"] = seed
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def all_combos(cfg: ShapesConfig):
    """Every categorical attribute combination of the configured space, as dicts."""
    for values in itertools.product(cfg.shapes, cfg.colors, cfg.motions, cfg.speeds, cfg.sizes, cfg.backgrounds):
        yield dict(zip(ATTRIBUTE_KEYS, values, strict=True))


def is_held_out(attrs: dict[str, Any], cfg: ShapesConfig) -> bool:
    return any(all(attrs.get(k) == v for k, v in combo.items()) for combo in cfg.holdout)


def is_drawable(attrs: dict[str, Any]) -> bool:
    """Visible contrast, and not a rotating circle (indistinguishable from a static one, so never made)."""
    if attrs["shape"] == "circle" and attrs["motion"] == "rotate":
        return False
    return contrasts(attrs["color"], attrs["background"])


def is_valid_combo(attrs: dict[str, Any], cfg: ShapesConfig) -> bool:
    """Generated for training: drawable and not held out."""
    return is_drawable(attrs) and not is_held_out(attrs, cfg)


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise ConfigError(f"limit: must be >= 0 (0 = all), got {limit}")


def _check_name(where: str, value: str, known) -> None:
    if value not in known:
        raise ConfigError(f"{where}: unknown value {value!r} (known: {', '.join(known)})")


def _check_names(where: str, values: list[str], known) -> None:
    if not values:
        raise ConfigError(f"{where}: must not be empty")
    for i, v in enumerate(values):
        _check_name(f"{where}[{i}]", v, known)
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: duplicate entries")


def _check_fractions(where: str, values: dict[str, float]) -> None:
    if not values:
        raise ConfigError(f"{where}: must not be empty")
    for name, v in values.items():
        if not 0.0 < v < 1.0:
            raise ConfigError(f"{where}.{name}: must be a fraction in (0, 1), got {v}")
