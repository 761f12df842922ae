"""Reading and writing WebDataset tar shards member-by-member, so pass-through members stay byte-for-byte."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .atomic import write_atomic

MANIFEST = "manifest.json"


class ShardError(ValueError):
    """An unreadable shard directory, manifest or tar; the message names the file."""


@dataclass
class RawSample:
    key: str
    members: list[tuple[str, bytes]]  # (extension, e.g. "video.npy", data) in tar order

    def get(self, ext: str) -> bytes | None:
        return next((data for e, data in self.members if e == ext), None)


@dataclass
class ShardRef:
    split: str
    name: str
    count: int
    sha256: str = ""  # of the raw shard, when its manifest records it


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The validated manifest of a shard directory (t2v_data's checks: format, geometry, splits, files present)."""
    from t2v_data.errors import DataError
    from t2v_data.shards import read_manifest as read_checked

    try:
        return read_checked(directory)
    except DataError as e:
        raise ShardError(str(e)) from None


def shard_refs(manifest: dict[str, Any]) -> list[ShardRef]:
    return [ShardRef(split, s["name"], int(s.get("count", 0)), str(s.get("sha256") or ""))
            for split, info in manifest["splits"].items() for s in info["shards"]]


def split_key(member_name: str) -> tuple[str, str]:
    """WebDataset convention: 'dir/abc.video.npy' -> ('dir/abc', 'video.npy')."""
    head, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def iter_tar(path: str | Path) -> Iterator[RawSample]:
    """Samples of a tar shard: consecutive members sharing a key."""
    path = Path(path)
    current: RawSample | None = None
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_key(info.name)
                data = tar.extractfile(info).read()
                if current is not None and current.key != key:
                    yield current
                    current = None
                if current is None:
                    current = RawSample(key, [])
                current.members.append((ext, data))
    except (tarfile.TarError, OSError, EOFError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":")
        raise ShardError(f"{path}: unreadable tar shard ({first})") from None
    if current is not None:
        yield current


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_tar_atomic(path: str | Path, samples: Iterable[RawSample]) -> int:
    """Write samples to a reproducible tar (fixed mtime/owner/mode) via temp file + rename; returns the count."""
    count = 0

    def write(f: IO[bytes]) -> None:
        nonlocal count
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for sample in samples:
                for ext, data in sample.members:
                    info = tarfile.TarInfo(f"{sample.key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o444
                    tar.addfile(info, io.BytesIO(data))
                count += 1

    write_atomic(path, write)
    return count
