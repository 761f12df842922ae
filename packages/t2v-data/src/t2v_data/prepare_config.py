"""The `data:` section of an experiment config: `PrepareConfig`, with one sub-section per registered source
(`data.shapes:`, `data.msrvtt:` ...; t2v_data.registry), every one of them validated whichever source is chosen."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from t2v_model.errors import ConfigError
from t2v_model.schema import build, to_dict

from .experiment import Paths
from .registry import SOURCES


@dataclass
class PrepareConfig:
    source: str = "shapes"  # a name in t2v_data.registry.SOURCES
    out_dir: str = "data/raw"
    num_samples: int = 1000  # synthetic sources (shapes, digits)
    frames: int = 8
    size: int = 32  # square side; height/width override it
    height: int | None = None
    width: int | None = None
    fps: float = 8  # frames per second of the clips, and of the videos the trained model generates
    # video files: "clips" = `frames` consecutive frames at `fps` (real speed), within one shot; "spread" = `frames`
    # frames evenly over the whole video (a time-lapse; each sample records its effective fps)
    sampling: Literal["clips", "spread"] = "clips"
    clips_per_video: int = 1  # at most this many clips from one video (spread evenly over its usable shots)
    clip_stride: float | None = None  # seconds between the starts of a video's clips; None = as spread as possible
    # shot-cut detection: a clip never spans a colour-histogram change above this (0..1); null = no detection
    scene_threshold: float | None = 0.25
    val_fraction: float = 0.05
    workers: int = 1
    shard_max_samples: int = 500
    shard_max_bytes: int = 256 * 1024 * 1024
    keep_mp4: bool = False  # also store the original encoded .mp4 as `video.mp4` (video files only)
    # every registered source's section, built by `prepare_config` (not a YAML key of its own)
    sections: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        """A source's section by its name, as in the YAML: `cfg.shapes.holdout` is data.shapes.holdout."""
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def section(self) -> Any:
        """The chosen source's section, e.g. the ShapesConfig when source is shapes."""
        return self.sections[self.source]

    @property
    def h(self) -> int:
        return self.height or self.size

    @property
    def w(self) -> int:
        return self.width or self.size

    @property
    def samples_per_item(self) -> int:
        """At most how many samples one listed input gives (several clips of one video)."""
        video = not SOURCES[self.source].synthetic and self.sampling == "clips"
        return self.clips_per_video if video else 1

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"source: unknown {self.source!r} (known: {', '.join(SOURCES)})")
        if self.frames < 2:
            raise ConfigError(f"frames: need at least 2, got {self.frames}")
        for key in ("size", "height", "width"):
            v = getattr(self, key)
            if v is not None and v < 16:
                raise ConfigError(f"{key}: must be >= 16 pixels, got {v}")
        for key in ("workers", "shard_max_samples", "shard_max_bytes", "clips_per_video"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not 0 < self.fps <= 240:
            raise ConfigError(f"fps: must be in (0, 240], got {self.fps}")
        if self.clip_stride is not None and self.clip_stride <= 0:
            raise ConfigError(f"clip_stride: must be positive seconds or null, got {self.clip_stride}")
        if self.scene_threshold is not None and not 0 <= self.scene_threshold <= 1:
            raise ConfigError(f"scene_threshold: must be in [0, 1] or null, got {self.scene_threshold}")
        if SOURCES[self.source].synthetic and self.num_samples < 1:
            raise ConfigError(f"num_samples: must be >= 1, got {self.num_samples}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if not self.out_dir:
            raise ConfigError("out_dir: must not be empty")


def prepare_config(data: dict[str, Any] | None, where: str = "data") -> PrepareConfig:
    """Build the `data:` section: the common keys, then every registered source's section (its defaults when the
    YAML has none), then the chosen source's own requirements. ConfigError naming `where.key`."""
    data = dict(data or {})
    sections = {name: data.pop(name, None) for name in SOURCES}
    try:
        cfg = build(PrepareConfig, data, where)
    except ConfigError as e:
        if "unknown key" in str(e):  # name the source sections among the known keys too
            raise ConfigError(f"{str(e).rstrip(')')}, {', '.join(SOURCES)})") from None
        raise
    cfg.sections = {name: build(source.config, sections[name], f"{where}.{name}") for name, source in SOURCES.items()}
    try:
        SOURCES[cfg.source].check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}.{e}") from None
    return cfg


def prepare_config_from_experiment(raw: dict[str, Any], workers: int | None = None) -> PrepareConfig:
    """The `data:` section of a whole experiment config; `out_dir` defaults to data/<name>/raw, where the embed stage
    looks for it (t2v_data.experiment.Paths). `workers` overrides data.workers."""
    data = dict(raw.get("data") or {})
    if workers is not None:
        data["workers"] = workers
    if not data.get("out_dir") and isinstance(raw.get("name"), str):
        data["out_dir"] = str(Paths(raw).prepared)
    return prepare_config(data)


def config_hash(cfg: PrepareConfig, seed: int) -> str:
    """sha256 of the canonical JSON of everything that changes the output (not out_dir/workers, nor the sections of
    other sources)."""
    d: dict[str, Any] = to_dict(cfg)
    for key in ("out_dir", "workers", "sections"):
        d.pop(key)
    d[cfg.source] = to_dict(cfg.section)
    d["seed"] = seed
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
