"""Writing files all or nothing: every file t2v writes (shards, manifests, checkpoints, videos, logs) is filled under
a hidden temp name beside its target, fsynced and renamed over it, so a crash leaves the old file or the new one,
never half of one. Torch-free.

    with AtomicFile("out/manifest.json") as f:     # f.file: the open temp file; f.tmp: its path, for writers that
        f.file.write(data)                         # want a path (safetensors, ffmpeg, PIL)
    write_json_atomic("out/manifest.json", {"format": ...})
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import T2VError

TEMP_SUFFIX = ".tmp"  # temp files are ".<name>.<random>.tmp": hidden, and never taken for a finished file


class AtomicFile:
    """A temp file beside `path` that becomes `path` on `commit()` (flush, fsync, rename; the umask's file mode,
    where mkstemp gives owner-only) or disappears on `discard()`. As a context manager: commit on success, discard on
    an exception (Ctrl-C included)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=TEMP_SUFFIX, dir=self.path.parent)
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "w+b")

    def commit(self) -> Path:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())  # also syncs what a path-based writer wrote to self.tmp: same inode
            self.file.close()
            keep_umask_mode(self.tmp)
            os.replace(self.tmp, self.path)
        except BaseException as e:
            self.discard()
            raise named(e, self.path)
        return self.path

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:  # flushing what is thrown away failed (a full disk): the error that led here is the one
            pass
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
            named(exc, self.path)


def named(e: BaseException, path: str | Path) -> BaseException:
    """`e`, with `path` as its file name when it is an OSError without one (a write to a full disk says only "No
    space left on device"), so that its one-line report names the file."""
    if isinstance(e, OSError) and not e.filename:
        e.filename = str(path)
    return e


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with AtomicFile(path) as f:
        f.file.write(data)
    return Path(path)


def json_bytes(obj: Any) -> bytes:
    """The one JSON serialisation of files t2v writes: indented, sorted keys, UTF-8, a final newline."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_bytes_atomic(path, json_bytes(obj))


def write_if_changed(path: str | Path, data: bytes) -> None:
    """`write_bytes_atomic`, except that an identical file is left untouched (a finished re-run writes nothing)."""
    try:
        if Path(path).read_bytes() == data:
            return
    except OSError:
        pass
    write_bytes_atomic(path, data)


def read_json(path: str | Path) -> Any:
    """The parsed file; ValueError (JSONDecodeError or UnicodeDecodeError) when it is not UTF-8 JSON, OSError when
    unreadable. Callers turn either into their own one-line error naming the file."""
    return json.loads(Path(path).read_bytes().decode("utf-8"))


def load_json(path: str | Path, error: type[T2VError], missing: str) -> Any:
    """The parsed JSON file at `path`, or `error` naming it when it does not exist (`missing` says what that means)
    or is not UTF-8 JSON."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        return read_json(path)
    except ValueError as e:
        raise error(f"{path}: not valid JSON ({e})") from None


def remove_temp(directory: str | Path) -> list[str]:
    """Remove what an interrupted write left in `directory`: hidden files and folders named *.tmp (this module's and
    the checkpoint writers'). Only for a directory no other process is writing to. Returns the names removed."""
    removed = []
    for p in sorted(Path(directory).glob(f".*{TEMP_SUFFIX}")):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def keep_umask_mode(path: str | Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp make owner-only files; give the renamed result the usual umask-based mode."""
    mask = os.umask(0o022)  # the only way to read the umask is to set it: put it back at once
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory `src` to `dst`, replacing an existing `dst` with at most a moment where neither exists under
    `dst`'s name (the old one is renamed aside first, then removed)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}{TEMP_SUFFIX}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
