"""MSR-VTT (Xu et al. 2016): YouTube clips with 20 English captions each, from its annotation file."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from t2v_model.errors import ConfigError, DataError

from .sources import Reject, VideoFileSource, WorkItem, natural_key, sample_key
from .video_decode import VIDEO_SUFFIXES

if TYPE_CHECKING:
    from .prepare_config import PrepareConfig


@dataclass
class MsrvttConfig:
    videos_dir: str = ""  # folder holding video0.mp4, video1.mp4, ...
    annotations: str = ""  # the official train_val_videodatainfo.json
    limit: int = 0  # at most this many videos (0 = all)

    def validate(self) -> None:
        if self.limit < 0:
            raise ConfigError(f"limit: must be >= 0 (0 = all), got {self.limit}")


class Msrvtt(VideoFileSource):
    name = "msrvtt"
    config = MsrvttConfig

    def check(self, cfg: PrepareConfig) -> None:
        for key in ("videos_dir", "annotations"):
            if not getattr(cfg.section, key):
                raise ConfigError(f"msrvtt.{key}: required when source is msrvtt")

    def list_work(self, cfg: PrepareConfig) -> tuple[list[WorkItem], list[Reject]]:
        mc: MsrvttConfig = cfg.section
        videos_dir, ann = Path(mc.videos_dir), Path(mc.annotations)
        if not videos_dir.is_dir():
            raise DataError(f"{videos_dir}: MSR-VTT videos directory not found (data.msrvtt.videos_dir)")
        if not ann.is_file():
            raise DataError(f"{ann}: MSR-VTT annotation file not found (data.msrvtt.annotations)")
        try:
            data = json.loads(ann.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{ann}: not valid JSON ({e})") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("videos"), list)
            or not isinstance(data.get("sentences"), list)
        ):
            raise DataError(f"{ann}: expected the official schema with 'videos' and 'sentences' lists")
        captions: dict[str, list[str]] = defaultdict(list)
        for s in data["sentences"]:
            if isinstance(s, dict) and isinstance(s.get("video_id"), str):
                captions[s["video_id"]].append(s.get("caption") if isinstance(s.get("caption"), str) else "")
        entries = {v["video_id"]: v for v in data["videos"]
                   if isinstance(v, dict) and isinstance(v.get("video_id"), str)}
        files = {p.stem: p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES}

        items, rejects = [], []
        ids = sorted(entries, key=natural_key)
        if mc.limit:
            ids = ids[: mc.limit]
        for vid in ids:
            path = files.get(vid, videos_dir / f"{vid}.mp4")
            if vid not in files:
                rejects.append(Reject(vid, str(path), "video file missing"))
                continue
            caps = [c.strip() for c in captions.get(vid, []) if c.strip()]
            if not caps:
                why = "empty captions" if captions.get(vid) else "no captions"
                rejects.append(Reject(vid, str(path), why))
                continue
            extra = {k: entries[vid][k] for k in ("category", "split", "start time", "end time", "url")
                     if k in entries[vid]}
            items.append(WorkItem(vid, sample_key("msrvtt", vid), path=str(path), captions=caps,
                                  attributes={"msrvtt": extra}, file_bytes=path.stat().st_size))
        for stem in sorted(set(files) - set(entries), key=natural_key):
            rejects.append(Reject(stem, str(files[stem]), "no entry in the annotation file"))
        return items, rejects


SOURCE = Msrvtt()
