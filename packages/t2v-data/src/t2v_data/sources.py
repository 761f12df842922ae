"""What a source is to the prepare stage. A source is one module that defines a `Source` (its name, the dataclass of
its `data.<name>:` section, how it lists its inputs and how it turns one into a sample) and one entry in
`t2v_data.registry`. The prepare stage plans, shards, parallelises and resumes; a source only lists and makes.

Listing is deterministic (sorted inputs, stable keys) so that shard contents can be planned up front; problems with
single inputs become `Reject`s (rejects.jsonl), never exceptions. Only an unusable root (a missing directory or
annotation file) is a DataError.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2v_model.errors import ConfigError, DataError

from .shards import encode_sample, tar_bytes
from .video_decode import decode, real_speed_clips, spread_clip, why_no_clip

if TYPE_CHECKING:
    from .prepare_config import PrepareConfig

META_BUDGET = 4096  # bytes reserved per sample for meta.json when planning shard sizes


@dataclass
class WorkItem:
    """One sample to make. Synthetic sources set `index`; file sources set `path` and `captions`."""

    source_id: str
    key: str
    index: int | None = None
    path: str | None = None
    captions: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    file_bytes: int = 0
    split: str | None = None  # a split the source prescribes (MSR-VTT's official one); None = by hash of source_id
    start: float | None = None  # seconds: only this span of the file (a list source's start/end columns)
    end: float | None = None


@dataclass
class Reject:
    source_id: str
    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"source_id": self.source_id, "path": self.path, "reason": self.reason}


@dataclass
class Made:
    """One sample made from a work item: its shard key, members, and the fps it plays at real speed."""

    key: str
    members: dict[str, bytes]
    fps: float


@dataclass
class FileSourceConfig:
    """What the section of every video-file source has."""

    limit: int = 0  # at most this many videos (0 = all)

    def validate(self) -> None:
        if self.limit < 0:
            raise ConfigError(f"limit: must be >= 0 (0 = all), got {self.limit}")


class Source:
    """Subclass per source; an instance is the registry entry."""

    name: str = ""  # data.source, and the name of the source's section data.<name>
    config: type = object  # the dataclass of data.<name>; its validate() runs whatever data.source is
    synthetic: bool = False  # generated clips (data.num_samples of them) rather than files

    def check(self, cfg: PrepareConfig) -> None:
        """ConfigError for what this source needs only when it is data.source (e.g. a directory to read)."""

    def list_work(self, cfg: PrepareConfig) -> tuple[list[WorkItem], list[Reject]]:
        raise NotImplementedError

    def maker(self, cfg: PrepareConfig, seed: int) -> Callable[[WorkItem], list[Made] | Reject]:
        """What turns one work item into its samples (or why it gives none); built once per process (each prepare
        worker has its own)."""
        raise NotImplementedError


class SyntheticSource(Source):
    """Clips drawn by a generator: `generator(cfg, seed).clip(index)` -> (video, captions, attributes)."""

    synthetic = True

    def generator(self, cfg: PrepareConfig, seed: int):
        raise NotImplementedError

    def list_work(self, cfg: PrepareConfig) -> tuple[list[WorkItem], list[Reject]]:
        keys = [f"{self.name}-{i:08d}" for i in range(cfg.num_samples)]
        return [WorkItem(k, k, index=i) for i, k in enumerate(keys)], []

    def maker(self, cfg: PrepareConfig, seed: int) -> Callable[[WorkItem], list[Made] | Reject]:
        generator = self.generator(cfg, seed)

        def make(item: WorkItem) -> list[Made]:
            video, captions, attrs = generator.clip(item.index)
            meta = {"captions": captions, "source": self.name, "source_id": item.source_id, "attributes": attrs}
            return [Made(item.key, encode_sample(video, meta), cfg.fps)]

        return make


class VideoFileSource(Source):
    """Video files with captions: each work item's file (or span) is decoded to the configured geometry and cut
    into clips (t2v_data.video_decode); every clip of a video gets all of its captions."""

    def maker(self, cfg: PrepareConfig, seed: int) -> Callable[[WorkItem], list[Made] | Reject]:
        def make(item: WorkItem) -> list[Made] | Reject:
            try:
                d = decode(item.path, cfg.h, cfg.w, cfg.fps, item.start, item.end)
                mp4 = Path(item.path).read_bytes() if keeps_mp4(item, cfg) else None
            except (DataError, OSError) as e:
                return Reject(item.source_id, str(item.path), str(e).removeprefix(f"{item.path}: "))
            if cfg.sampling == "spread":
                clips = [spread_clip(d, cfg.frames)]
            else:
                clips = real_speed_clips(d, cfg.frames, cfg.clips_per_video, cfg.clip_stride, cfg.scene_threshold)
                if not clips:
                    return Reject(item.source_id, str(item.path), why_no_clip(d, cfg.frames, cfg.scene_threshold))
            info = {"duration": d.duration, "source_fps": d.source_fps, "source_size": d.source_size,
                    "decoded_frames": len(d.frames)}
            made = []
            for j, clip in enumerate(clips):
                key = item.key if cfg.samples_per_item == 1 else f"{item.key}-clip{j}"
                meta = {"captions": item.captions, "source": self.name, "source_id": item.source_id,
                        "fps": round(clip.fps, 3), "span": list(clip.span),
                        "attributes": {**item.attributes, **info, "frame_indices": clip.indices}}
                made.append(Made(key, encode_sample(clip.video, meta, mp4 if j == 0 else None), clip.fps))
            return made

        return make


def split_of(source_id: str, val_fraction: float) -> str:
    """Stable train/val assignment from a hash of the source id (never the sample order)."""
    h = int.from_bytes(hashlib.sha256(source_id.encode()).digest()[:8], "big") / 2.0**64
    return "val" if h < val_fraction else "train"


def estimated_bytes(item: WorkItem, cfg: PrepareConfig) -> int:
    """Tar bytes of the item's samples at most (exact for video.npy, a budget for meta.json)."""
    video = 128 + cfg.frames * cfg.h * cfg.w * 3
    meta = META_BUDGET + sum(len(c.encode()) + 4 for c in item.captions)
    mp4 = tar_bytes([item.file_bytes]) if keeps_mp4(item, cfg) else 0  # with the first clip only
    return tar_bytes([video, meta]) * cfg.samples_per_item + mp4


def keeps_mp4(item: WorkItem, cfg: PrepareConfig) -> bool:
    return cfg.keep_mp4 and item.path is not None and Path(item.path).suffix.lower() == ".mp4"


def natural_key(text: str):
    """video2 < video10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def sample_key(prefix: str, name: str) -> str:
    """A shard key (letters, digits, _ and -) from a source's own id."""
    return f"{prefix}-" + re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def dedupe_keys(items: list[WorkItem]) -> None:
    """Keys must be unique; sanitising can collide ("a b.mp4" vs "a_b.gif"): suffix those with a hash."""
    seen: dict[str, int] = defaultdict(int)
    for it in items:
        seen[it.key] += 1
    for it in items:
        if seen[it.key] > 1:
            it.key += "-" + hashlib.sha1(it.source_id.encode()).hexdigest()[:8]
