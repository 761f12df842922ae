"""MSR-VTT (Xu et al. 2016) as released: 10,000 YouTube clips with 20 English captions each, in its official split.

Annotation files (any of them, several at once; the format is recognised from the content):
- train_val_videodatainfo.json and test_videodatainfo.json (the official release; TrainValVideo/, TestVideo/),
- MSRVTT_data.json (the combined file retrieval code uses: all 10,000 videos, each with its split),
both {"videos": [{"video_id", "split", "category", ...}], "sentences": [{"video_id", "caption"}]};
- the "1k-A" test list, a CSV with columns key,vid_key,video_id,sentence (MSRVTT_JSFUSION_test.csv): test videos.

Splits: train -> train, validate -> val, test -> test (never read by training). A video any file calls test is a
test video. Every caption of a video is kept, in file order; training draws one at random each time it sees the
clip, validation and evaluation use the first.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2v_model.errors import ConfigError, DataError

from .sources import FileSourceConfig, Reject, VideoFileSource, WorkItem, natural_key, sample_key
from .video_decode import VIDEO_SUFFIXES

if TYPE_CHECKING:
    from .prepare_config import PrepareConfig

SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
FORMATS = ("train_val_videodatainfo.json / test_videodatainfo.json (the official release), MSRVTT_data.json (all "
           "videos with their split), or the 1k-A test CSV (columns key,vid_key,video_id,sentence)")


@dataclass
class MsrvttConfig(FileSourceConfig):  # limit: the first videos in video-id order
    videos_dir: str = ""  # searched recursively for video<N>.mp4: the folder holding TrainValVideo/ and TestVideo/
    annotations: list[str] = field(default_factory=list)  # annotation files, see the module docstring


@dataclass
class Entry:
    split: str = "train"
    captions: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Msrvtt(VideoFileSource):
    name = "msrvtt"
    config = MsrvttConfig

    def check(self, cfg: PrepareConfig) -> None:
        if not cfg.msrvtt.videos_dir:
            raise ConfigError("msrvtt.videos_dir: required when source is msrvtt")
        if not cfg.msrvtt.annotations:
            raise ConfigError(f"msrvtt.annotations: required when source is msrvtt: a list of {FORMATS}")

    def list_work(self, cfg: PrepareConfig) -> tuple[list[WorkItem], list[Reject]]:
        mc: MsrvttConfig = cfg.msrvtt
        videos_dir = Path(mc.videos_dir)
        if not videos_dir.is_dir():
            raise DataError(f"{videos_dir}: MSR-VTT videos directory not found (data.msrvtt.videos_dir)")
        entries: dict[str, Entry] = defaultdict(Entry)
        for ann in map(Path, mc.annotations):
            read_annotations(ann, entries)
        files = {p.stem: p for p in sorted(videos_dir.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES}

        items, rejects = [], []
        ids = sorted(entries, key=natural_key)
        if mc.limit:
            ids = ids[: mc.limit]
        for vid in ids:
            entry = entries[vid]
            path = files.get(vid, videos_dir / f"{vid}.mp4")
            if vid not in files:
                rejects.append(Reject(vid, str(path), "video file missing"))
                continue
            caps = list(dict.fromkeys(c.strip() for c in entry.captions if c.strip()))
            if not caps:
                rejects.append(Reject(vid, str(path), "empty captions" if entry.captions else "no captions"))
                continue
            items.append(WorkItem(vid, sample_key("msrvtt", vid), path=str(path), captions=caps,
                                  attributes={"msrvtt": {**entry.info, "split": entry.split}},
                                  file_bytes=path.stat().st_size, split=SPLITS[entry.split]))
        for stem in sorted(set(files) - set(entries), key=natural_key):
            rejects.append(Reject(stem, str(files[stem]), "no entry in the annotation files (data.msrvtt.annotations)"))
        return items, rejects


def read_annotations(path: Path, entries: dict[str, Entry]) -> None:
    """Add the videos and captions of one annotation file to `entries`; DataError naming the file otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: MSR-VTT annotation file not found (data.msrvtt.annotations)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable annotation file ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("videos"), list) and isinstance(data.get("sentences"), list):
        _read_json(path, data, entries)
        return
    rows = list(csv.DictReader(io.StringIO(text))) if data is None else []
    if rows and {"video_id", "sentence"} <= set(rows[0]):
        for row in rows:
            entry = entries[row["video_id"]]
            entry.split = "test"  # the 1k-A list is a test set: never trained on, whatever another file says
            entry.captions.append(row["sentence"] or "")
        return
    raise DataError(f"{path}: not an MSR-VTT annotation format this reads; supported: {FORMATS}")


def _read_json(path: Path, data: dict, entries: dict[str, Entry]) -> None:
    for v in data["videos"]:
        if not isinstance(v, dict) or not isinstance(v.get("video_id"), str):
            continue
        split = v.get("split", "train")
        if split not in SPLITS:
            raise DataError(f"{path}: video {v['video_id']}: unknown split {split!r} (known: {', '.join(SPLITS)})")
        entry = entries[v["video_id"]]
        if entry.split != "test":  # a video any file calls test stays a test video
            entry.split = split
        entry.info.update({k: v[k] for k in ("category", "start time", "end time", "url") if k in v})
    for s in data["sentences"]:
        if isinstance(s, dict) and isinstance(s.get("video_id"), str):
            entries[s["video_id"]].captions.append(s.get("caption") if isinstance(s.get("caption"), str) else "")


SOURCE = Msrvtt()
