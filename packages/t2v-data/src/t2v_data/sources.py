"""The four sources behind one interface: `list_work` enumerates the samples to make (deterministically),
`SampleMaker.make` turns one work item into shard members or a Reject."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from .digits import DigitsGenerator
from .errors import DataError
from .file_sources import Reject, WorkItem, list_folder, list_msrvtt
from .prepare_config import PrepareConfig
from .shapes import ShapesGenerator
from .shards import encode_sample, tar_bytes
from .video_decode import decode_clip

META_BUDGET = 4096  # bytes reserved per sample for meta.json when planning shard sizes


def list_work(cfg: PrepareConfig) -> tuple[list[WorkItem], list[Reject]]:
    if cfg.source in ("shapes", "digits"):
        return [WorkItem(f"{cfg.source}-{i:08d}", f"{cfg.source}-{i:08d}", index=i) for i in range(cfg.num_samples)], []
    if cfg.source == "msrvtt":
        return list_msrvtt(cfg.msrvtt)
    return list_folder(cfg.folder)


def estimated_bytes(item: WorkItem, cfg: PrepareConfig) -> int:
    """Tar bytes of the item's sample (exact for video.npy, a budget for meta.json)."""
    video = 128 + cfg.frames * cfg.h * cfg.w * 3
    meta = META_BUDGET + sum(len(c.encode()) + 4 for c in item.captions)
    sizes = [video, meta] + ([item.file_bytes] if keeps_mp4(item, cfg) else [])
    return tar_bytes(sizes)


def keeps_mp4(item: WorkItem, cfg: PrepareConfig) -> bool:
    return cfg.keep_mp4 and item.path is not None and Path(item.path).suffix.lower() == ".mp4"


class SampleMaker:
    def __init__(self, cfg: PrepareConfig, seed: int):
        self.cfg, self.seed = cfg, seed

    @cached_property
    def generator(self) -> ShapesGenerator | DigitsGenerator:
        return (ShapesGenerator if self.cfg.source == "shapes" else DigitsGenerator)(self.cfg, self.seed)

    def make(self, item: WorkItem) -> dict[str, bytes] | Reject:
        cfg = self.cfg
        if item.index is not None:
            video, captions, attrs = self.generator.clip(item.index)
            meta = {"captions": captions, "source": cfg.source, "source_id": item.source_id, "attributes": attrs}
            return encode_sample(video, meta)
        try:
            video, info = decode_clip(item.path, cfg.frames, cfg.h, cfg.w, cfg.fps, cfg.sampling)
            mp4 = Path(item.path).read_bytes() if keeps_mp4(item, cfg) else None
        except (DataError, OSError) as e:
            return Reject(item.source_id, str(item.path), str(e).removeprefix(f"{item.path}: "))
        meta = {
            "captions": item.captions,
            "source": cfg.source,
            "source_id": item.source_id,
            "attributes": {**item.attributes, **info},
        }
        return encode_sample(video, meta, mp4)
