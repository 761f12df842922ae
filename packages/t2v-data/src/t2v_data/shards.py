"""WebDataset tar shards (format `t2v-shards/1`, see docs/FORMATS.md): writing one shard atomically, and the
reader helpers the embed and train stages use.

    manifest = read_manifest("data/quickstart/raw")            # validated dict
    for s in iter_samples("data/quickstart/raw", "train"):
        s["key"], s["video"], s["meta"], s["raw"]               # str, uint8 (T,H,W,C), dict, {member: bytes}
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import DataError

FORMAT = "t2v-shards/1"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
SPLITS = ("train", "val")
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def encode_video(video: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(video, dtype=np.uint8), allow_pickle=False)
    return buf.getvalue()


def decode_video(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_meta(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_sample(video: np.ndarray, meta: dict[str, Any], mp4: bytes | None = None) -> dict[str, bytes]:
    """Members of one sample: {"video.npy", "meta.json"[, "video.mp4"]}."""
    members = {"video.npy": encode_video(video), "meta.json": encode_meta(meta)}
    if mp4 is not None:
        members["video.mp4"] = mp4
    return members


def tar_bytes(member_sizes) -> int:
    """Bytes a tar needs for members of these sizes (512-byte header + data padded to 512)."""
    return sum(512 + -(-n // 512) * 512 for n in member_sizes)


class _HashingWriter:
    """The file object tarfile writes to: hashes the bytes on their way to the file."""

    def __init__(self, file: IO[bytes], digest):
        self.file, self.digest = file, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()


class ShardWriter:
    """Writes one tar shard with reproducible bytes (fixed mtime/owner, members in the order written).

    Members go to a hidden temp file that is renamed onto `path` by `close()`, so a shard file exists only
    when it is complete; leaving the `with` block on an exception removes the temp file. `max_samples` /
    `max_bytes` are limits: `fits(nbytes)` says whether one more sample of `nbytes` is within them
    (`write` refuses a sample that is not, unless the shard is empty)."""

    def __init__(self, path: str | Path, max_samples: int | None = None, max_bytes: int | None = None):
        self.path = Path(path)
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.count = 0
        self.bytes = 1024  # the end-of-archive blocks
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._tar = tarfile.open(fileobj=_HashingWriter(self._file, self._hash), mode="w", format=tarfile.USTAR_FORMAT)

    @property
    def sha256(self) -> str:
        """Hex digest of the bytes written so far (of the whole file once closed)."""
        return self._hash.hexdigest()

    def fits(self, nbytes: int) -> bool:
        if self.max_samples is not None and self.count >= self.max_samples:
            return False
        return self.max_bytes is None or self.bytes + nbytes <= self.max_bytes

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if not KEY_RE.match(key):
            raise ValueError(f"sample key {key!r} must match {KEY_RE.pattern} (no dots)")
        nbytes = tar_bytes(len(v) for v in members.values())
        if self.count and not self.fits(nbytes):
            raise ValueError(f"{self.path.name}: sample {key} exceeds the shard limits")
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.bytes += nbytes

    def close(self) -> Path:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        keep_umask_mode(self._tmp)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._tar.close()
            self._file.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def json_bytes(obj: Any) -> bytes:
    """The bytes `write_json_atomic` writes: indented, sorted keys, UTF-8."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def keep_umask_mode(tmp: str | Path) -> None:
    """mkstemp makes owner-only temp files; give the renamed result the usual umask-based mode."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` all or nothing: `write(f)` fills a temp file beside it, which is fsynced and renamed over `path`
    (a crash leaves either the old file or the new one, never half of one). Keeps the umask's file mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        keep_umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """Load and check `manifest.json` of a shard directory (format, geometry, splits, shard files present).
    Raises DataError with a one-line message naming the file."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no manifest (run pipelines/prepare.py first, or it did not finish)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{path}: format must be {FORMAT!r}, got {m.get('format') if isinstance(m, dict) else m!r}")
    geo = m.get("geometry")
    keys = ("frames", "height", "width", "channels", "fps")
    if not isinstance(geo, dict) or any(not isinstance(geo.get(k), int) or geo[k] < 1 for k in keys):
        raise DataError(f"{path}: geometry must have positive integers {', '.join(keys)}")
    splits = m.get("splits")
    if not isinstance(splits, dict) or not set(splits) <= set(SPLITS):
        raise DataError(f"{path}: splits must be a mapping with keys among {SPLITS}")
    for split, info in splits.items():
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list) or any(
            not isinstance(s, dict) or "name" not in s or "count" not in s for s in shards
        ):
            raise DataError(f"{path}: splits.{split}.shards must be a list of {{name, count}}")
        if any(not isinstance(s.get("sha256", ""), str) for s in shards):
            raise DataError(f"{path}: splits.{split}.shards: sha256 must be a string")
        if sum(s["count"] for s in shards) != info.get("count"):
            raise DataError(f"{path}: splits.{split}.count does not equal the sum of its shard counts")
        for s in shards:
            if not (path.parent / s["name"]).is_file():
                raise DataError(f"{path.parent / s['name']}: shard listed in the manifest is missing")
    return m


def shard_paths(shard_dir: str | Path, split: str) -> list[Path]:
    """Paths of the shards of `split`, in manifest order ([] for a split that has none)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    info = read_manifest(shard_dir)["splits"].get(split)
    return [Path(shard_dir) / s["name"] for s in (info or {"shards": []})["shards"]]


def iter_shard(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member ext: bytes}) per sample of one tar, in stored order."""
    path = Path(path)
    key, members = None, {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, _, ext = info.name.partition(".")
                if k != key and members:
                    yield key, members
                    members = {}
                key = k
                members[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: unreadable shard ({e})") from None
    if members:
        yield key, members


def iter_samples(shard_dir: str | Path, split: str, decode: bool = True) -> Iterator[dict[str, Any]]:
    """Samples of one split in a stable order (manifest shard order, then stored order):
    {"key": str, "shard": str, "raw": {"video.npy": bytes, "meta.json": bytes, ...every member},
     "meta": dict, "video": uint8 (T, H, W, C) (only when decode=True)}.
    `raw` lets a later stage pass members through byte-for-byte. Videos are checked against the manifest
    geometry; a mismatch raises DataError naming the shard and key."""
    m = read_manifest(shard_dir)
    g = m["geometry"]
    want = (g["frames"], g["height"], g["width"], g["channels"])
    for path in shard_paths(shard_dir, split):
        for key, raw in iter_shard(path):
            if "video.npy" not in raw or "meta.json" not in raw:
                raise DataError(f"{path}: sample {key} lacks video.npy or meta.json")
            sample: dict[str, Any] = {"key": key, "shard": path.name, "raw": raw, "meta": json.loads(raw["meta.json"])}
            if decode:
                video = decode_video(raw["video.npy"])
                if video.dtype != np.uint8 or video.shape != want:
                    raise DataError(
                        f"{path}: sample {key} video is {video.dtype} {video.shape}, manifest says uint8 {want}"
                    )
                sample["video"] = video
            yield sample
