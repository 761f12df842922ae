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

from t2v_model.errors import DataError

from .shards import encode_sample, tar_bytes
from .video_decode import decode_clip

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


@dataclass
class Reject:
    source_id: str
    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"source_id": self.source_id, "path": self.path, "reason": self.reason}


Made = dict[str, bytes] | Reject  # the members of one sample, or why the input gave none


class Source:
    """Subclass per source; an instance is the registry entry."""

    name: str = ""  # data.source, and the name of the source's section data.<name>
    config: type = object  # the dataclass of data.<name>; its validate() runs whatever data.source is
    synthetic: bool = False  # generated clips (data.num_samples of them) rather than files

    def check(self, cfg: PrepareConfig) -> None:
        """ConfigError for what this source needs only when it is data.source (e.g. a directory to read)."""

    def list_work(self, cfg: PrepareConfig) -> tuple[list[WorkItem], list[Reject]]:
        raise NotImplementedError

    def maker(self, cfg: PrepareConfig, seed: int) -> Callable[[WorkItem], Made]:
        """What turns one work item into a sample; built once per process (each prepare worker has its own)."""
        raise NotImplementedError


class SyntheticSource(Source):
    """Clips drawn by a generator: `generator(cfg, seed).clip(index)` -> (video, captions, attributes)."""

    synthetic = True

    def generator(self, cfg: PrepareConfig, seed: int):
        raise NotImplementedError

    def list_work(self, cfg: PrepareConfig) -> tuple[list[WorkItem], list[Reject]]:
        keys = [f"{self.name}-{i:08d}" for i in range(cfg.num_samples)]
        return [WorkItem(k, k, index=i) for i, k in enumerate(keys)], []

    def maker(self, cfg: PrepareConfig, seed: int) -> Callable[[WorkItem], Made]:
        generator = self.generator(cfg, seed)

        def make(item: WorkItem) -> Made:
            video, captions, attrs = generator.clip(item.index)
            meta = {"captions": captions, "source": self.name, "source_id": item.source_id, "attributes": attrs}
            return encode_sample(video, meta)

        return make


class VideoFileSource(Source):
    """Video files with captions: each work item's file is decoded to the configured geometry."""

    def maker(self, cfg: PrepareConfig, seed: int) -> Callable[[WorkItem], Made]:
        def make(item: WorkItem) -> Made:
            try:
                video, info = decode_clip(item.path, cfg.frames, cfg.h, cfg.w, cfg.fps, cfg.sampling)
                mp4 = Path(item.path).read_bytes() if keeps_mp4(item, cfg) else None
            except (DataError, OSError) as e:
                return Reject(item.source_id, str(item.path), str(e).removeprefix(f"{item.path}: "))
            meta = {"captions": item.captions, "source": self.name, "source_id": item.source_id,
                    "attributes": {**item.attributes, **info}}
            return encode_sample(video, meta, mp4)

        return make


def estimated_bytes(item: WorkItem, cfg: PrepareConfig) -> int:
    """Tar bytes of the item's sample (exact for video.npy, a budget for meta.json)."""
    video = 128 + cfg.frames * cfg.h * cfg.w * 3
    meta = META_BUDGET + sum(len(c.encode()) + 4 for c in item.captions)
    sizes = [video, meta] + ([item.file_bytes] if keeps_mp4(item, cfg) else [])
    return tar_bytes(sizes)


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
