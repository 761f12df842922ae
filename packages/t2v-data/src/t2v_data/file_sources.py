"""Listing real-video inputs (MSR-VTT and caption folders) as work items; problems found while listing
become rejects, never exceptions, except a missing input directory / annotation file (a DataError)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError
from .prepare_config import FolderConfig, MsrvttConfig

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm")


@dataclass
class WorkItem:
    """One sample to produce. Synthetic sources set `index`; file sources set `path` and `captions`."""

    source_id: str
    key: str
    index: int | None = None
    path: str | None = None
    captions: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    file_bytes: int = 0


@dataclass
class Reject:
    source_id: str
    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"source_id": self.source_id, "path": self.path, "reason": self.reason}


def natural_key(text: str):
    """video2 < video10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def list_msrvtt(cfg: MsrvttConfig) -> tuple[list[WorkItem], list[Reject]]:
    videos_dir, ann = Path(cfg.videos_dir), Path(cfg.annotations)
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
    entries = {v["video_id"]: v for v in data["videos"] if isinstance(v, dict) and isinstance(v.get("video_id"), str)}
    files = {p.stem: p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES}

    items, rejects = [], []
    ids = sorted(entries, key=natural_key)
    if cfg.limit:
        ids = ids[: cfg.limit]
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
        extra = {
            k: entries[vid][k] for k in ("category", "split", "start time", "end time", "url") if k in entries[vid]
        }
        items.append(
            WorkItem(
                vid,
                _key("msrvtt", vid),
                path=str(path),
                captions=caps,
                attributes={"msrvtt": extra},
                file_bytes=path.stat().st_size,
            )
        )
    for stem in sorted(set(files) - set(entries), key=natural_key):
        rejects.append(Reject(stem, str(files[stem]), "no entry in the annotation file"))
    return items, rejects


def list_folder(cfg: FolderConfig) -> tuple[list[WorkItem], list[Reject]]:
    root = Path(cfg.dir)
    if not root.is_dir():
        raise DataError(f"{root}: video folder not found (data.folder.dir)")
    paths = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
        key=lambda p: natural_key(p.relative_to(root).as_posix()),
    )
    if not paths:
        patterns = ", ".join("*" + s for s in VIDEO_SUFFIXES)
        raise DataError(f"{root}: no video files ({patterns}, searched recursively) (data.folder.dir)")
    if cfg.limit:
        paths = paths[: cfg.limit]
    items, rejects = [], []
    for p in paths:
        rel = p.relative_to(root).as_posix()
        txt = p.with_suffix(".txt")
        if not txt.is_file():
            rejects.append(Reject(rel, str(p), f"no caption file {txt.name}"))
            continue
        try:
            caps = [line.strip() for line in txt.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            rejects.append(Reject(rel, str(p), f"unreadable caption file ({e})"))
            continue
        if not caps:
            rejects.append(Reject(rel, str(p), "empty caption"))
            continue
        items.append(
            WorkItem(
                rel, _key("folder", rel.rsplit(".", 1)[0]), path=str(p), captions=caps, file_bytes=p.stat().st_size
            )
        )
    _dedupe_keys(items)
    return items, rejects


def _key(prefix: str, name: str) -> str:
    return f"{prefix}-" + re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def _dedupe_keys(items: list[WorkItem]) -> None:
    """Keys must be unique; sanitising can collide ("a b.mp4" vs "a_b.gif"): suffix those with a hash."""
    seen: dict[str, int] = defaultdict(int)
    for it in items:
        seen[it.key] += 1
    for it in items:
        if seen[it.key] > 1:
            it.key += "-" + hashlib.sha1(it.source_id.encode()).hexdigest()[:8]
