"""A folder of your own videos, each with a same-stem .txt caption file (one caption per non-empty line).

Every file under the folder is accounted for: a video (any container in VIDEO_SUFFIXES: .mp4 .mov .mkv .webm .avi
.gif ...) becomes clips or a reject with ffmpeg's reason; a .txt file is a caption; anything else (hidden files
aside) is listed in rejects.jsonl as not a video."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from t2v_model.errors import ConfigError, DataError

from .sources import FileSourceConfig, Reject, VideoFileSource, WorkItem, dedupe_keys, natural_key, sample_key
from .video_decode import VIDEO_SUFFIXES

if TYPE_CHECKING:
    from .prepare_config import PrepareConfig


@dataclass
class FolderConfig(FileSourceConfig):
    dir: str = ""  # videos (searched recursively), each with a same-stem .txt (one caption per non-empty line)
    follow_symlinks: bool = False  # take links that resolve outside dir (a caption linked to /etc/passwd is not)


class Folder(VideoFileSource):
    name = "folder"
    config = FolderConfig

    def check(self, cfg: PrepareConfig) -> None:
        if not cfg.section.dir:
            raise ConfigError("folder.dir: required when source is folder")

    def list_work(self, cfg: PrepareConfig) -> tuple[list[WorkItem], list[Reject]]:
        fc: FolderConfig = cfg.section
        root = Path(fc.dir)
        if not root.is_dir():
            raise DataError(f"{root}: video folder not found (data.folder.dir)")
        files = sorted((p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root))),
                       key=lambda p: natural_key(p.relative_to(root).as_posix()))
        paths = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
        if not paths:
            patterns = ", ".join("*" + s for s in VIDEO_SUFFIXES)
            raise DataError(f"{root}: no video files ({patterns}, searched recursively) (data.folder.dir)")
        if fc.limit:
            paths = paths[: fc.limit]
        items, rejects = [], []
        for p in files:
            if p.suffix.lower() not in (*VIDEO_SUFFIXES, ".txt"):
                rel = p.relative_to(root).as_posix()
                rejects.append(Reject(rel, str(p), f"not a video file ({p.suffix or 'no extension'}; videos are "
                                                   f"{' '.join(VIDEO_SUFFIXES)})"))
        inside = root.resolve()
        for p in paths:
            rel = p.relative_to(root).as_posix()
            txt = p.with_suffix(".txt")
            if not txt.is_file():
                rejects.append(Reject(rel, str(p), f"no caption file {txt.name}"))
                continue
            outside = [f.name for f in (p, txt) if not fc.follow_symlinks and not f.resolve().is_relative_to(inside)]
            if outside:
                rejects.append(Reject(rel, str(p), f"{' and '.join(outside)}: a link to outside data.folder.dir; set "
                                                   f"data.folder.follow_symlinks: true to take it"))
                continue
            try:
                caps = [line.strip() for line in txt.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as e:
                rejects.append(Reject(rel, str(p), f"unreadable caption file ({e})"))
                continue
            if not caps:
                rejects.append(Reject(rel, str(p), "empty caption"))
                continue
            items.append(WorkItem(rel, sample_key("folder", rel.rsplit(".", 1)[0]), path=str(p), captions=caps,
                                  file_bytes=p.stat().st_size))
        dedupe_keys(items)
        return items, rejects


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


SOURCE = Folder()
