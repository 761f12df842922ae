"""A list of videos with captions: a CSV (with a header row) or JSONL file, one row per (video, caption), optionally
with the start and end seconds of the span the caption describes. The shape of WebVid-style metadata:

    data:
      source: list
      list: {file: data/webvid/results_10M_val.csv, path: "{page_dir}/{videoid}.mp4", caption: name}

Rows naming the same file and span are one video with several captions. All spans of one file go to the same split
(a hash of its path), so no clip of a validation video is trained on.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2v_model.errors import ConfigError, DataError

from .sources import FileSourceConfig, Reject, VideoFileSource, WorkItem, dedupe_keys, natural_key, sample_key, split_of

if TYPE_CHECKING:
    from .prepare_config import PrepareConfig


@dataclass
class ListConfig(FileSourceConfig):
    file: str = ""  # .csv (header row) or .jsonl (one JSON object per line)
    root: str | None = None  # where relative paths start; None = the list file's folder
    path: str = "path"  # the column with the video's path, or a template of columns, e.g. "{page_dir}/{videoid}.mp4"
    caption: str = "caption"  # the caption column
    start: str = "start"  # the columns of the span's start / end seconds; rows without them use the whole video
    end: str = "end"


class VideoList(VideoFileSource):
    name = "list"
    config = ListConfig

    def check(self, cfg: PrepareConfig) -> None:
        if not cfg.list.file:
            raise ConfigError("list.file: required when source is list (a .csv or .jsonl of path, caption rows)")

    def list_work(self, cfg: PrepareConfig) -> tuple[list[WorkItem], list[Reject]]:
        lc: ListConfig = cfg.list
        path = Path(lc.file)
        root = Path(lc.root) if lc.root else path.parent
        rows = read_rows(path)
        videos: dict[tuple[str, float | None, float | None], list[str]] = defaultdict(list)
        rejects: list[Reject] = []
        for n, row in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
            where = f"{path}:{n}"
            try:
                video = _value(row, lc.path, "path")
                caption = _value(row, lc.caption, "caption").strip()
                span = _seconds(row, lc.start), _seconds(row, lc.end)
            except ValueError as e:
                rejects.append(Reject(where, where, str(e)))
                continue
            if span[0] is not None and span[1] is not None and span[1] <= span[0]:
                rejects.append(Reject(where, where, f"end {span[1]} s is not after start {span[0]} s"))
                continue
            if not caption:
                rejects.append(Reject(where, where, "empty caption"))
                continue
            videos[(video, *span)].append(caption)

        items = []
        for (video, start, end), captions in sorted(videos.items(), key=lambda kv: (natural_key(kv[0][0]),
                                                                                     kv[0][1] or 0.0)):
            file = root / video
            span = "" if start is None and end is None else f"@{start or 0:g}-{'' if end is None else f'{end:g}'}"
            if not file.is_file():
                rejects.append(Reject(video + span, str(file), "video file missing"))
                continue
            items.append(WorkItem(video + span, sample_key("list", video.rsplit(".", 1)[0] + span), path=str(file),
                                  captions=list(dict.fromkeys(captions)), file_bytes=file.stat().st_size,
                                  split=split_of(video, cfg.val_fraction), start=start, end=end))
        if lc.limit:
            keep = list(dict.fromkeys(it.path for it in items))[: lc.limit]
            items = [it for it in items if it.path in set(keep)]
        dedupe_keys(items)
        return items, rejects


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: video list not found (data.list.file)")
    kind = path.suffix.lower()
    if kind not in (".csv", ".jsonl"):
        raise DataError(f"{path}: a video list is a .csv (with a header row) or a .jsonl file (data.list.file)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable video list ({e})") from None
    if kind == ".csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: not a JSON object")
        rows.append(row)
    return rows


def _value(row: dict[str, Any], spec: str, what: str) -> str:
    """A column's value, or a "{column}" template filled from the row; ValueError saying which is missing."""
    try:
        value = spec.format_map(row) if "{" in spec else row[spec]
    except KeyError as e:
        raise ValueError(f"no {e.args[0]!r} column for the {what} (data.list.{what})") from None
    if value is None or str(value).strip() == "":
        raise ValueError(f"empty {what}")
    return str(value)


def _seconds(row: dict[str, Any], column: str) -> float | None:
    value = row.get(column)
    if value is None or str(value).strip() == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{column}: {value!r} is not a number of seconds") from None
    if seconds < 0:
        raise ValueError(f"{column}: {seconds} is negative")
    return seconds


SOURCE = VideoList()
