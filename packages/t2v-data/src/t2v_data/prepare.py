"""The prepare stage: any source → train/val WebDataset shards + manifest.json + rejects.jsonl.

The work is planned up front (deterministic shard contents), so shards can be written by parallel workers
and a re-run skips every shard already complete: a shard is complete once its tar was renamed into place
and its record (`.prepare/<shard>.json`: count, rejects, planned keys) written. `manifest.json` is last."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import multiprocessing.util as mp_util
import os
import pickle
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import to_dict
from .errors import DataError
from .file_sources import Reject, WorkItem
from .prepare_config import PrepareConfig, config_hash
from .shards import (
    FORMAT,
    MANIFEST,
    REJECTS,
    SPLITS,
    ShardWriter,
    json_bytes,
    shard_name,
    write_bytes_atomic,
    write_json_atomic,
)
from .sources import SampleMaker, estimated_bytes, list_work

STATE_DIR = ".prepare"
SHARD_RE = re.compile(r"^(train|val)-\d{6}\.tar$")


@dataclass
class ShardPlan:
    split: str
    index: int
    items: list[WorkItem]
    inputs: str = ""  # inputs_digest(self), set when planned

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


@dataclass
class ShardRecord:
    name: str
    count: int
    rejects: list[dict[str, str]]
    planned: list[str]
    inputs: str = ""  # the plan's inputs_digest when the shard was written
    sha256: str = ""  # of the shard file ("" when every input was rejected)


@dataclass
class PrepareSummary:
    out_dir: str
    counts: dict[str, int]
    shards: dict[str, int]
    rejects: int
    written: int  # shards written by this run
    skipped: int  # shards already complete
    processed: int  # inputs turned into samples or rejects by this run
    seconds: float
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        per = ", ".join(f"{s} {self.counts[s]} clips in {self.shards[s]} shards" for s in SPLITS)
        return [
            f"wrote {self.out_dir}: {per}",
            f"rejects {self.rejects} (see {Path(self.out_dir) / REJECTS}); shards written {self.written}, "
            f"already complete {self.skipped}; {self.seconds:.1f} s, {self.clips_per_s:.1f} clips/s",
        ]


def split_of(source_id: str, val_fraction: float) -> str:
    """Stable train/val assignment from a hash of the source id (never the sample order)."""
    h = int.from_bytes(hashlib.sha256(source_id.encode()).digest()[:8], "big") / 2.0**64
    return "val" if h < val_fraction else "train"


def plan_shards(items: list[WorkItem], cfg: PrepareConfig) -> list[ShardPlan]:
    """Pack items, in listing order and per split, into shards within shard_max_samples / shard_max_bytes
    (a single item larger than the byte limit gets a shard of its own)."""
    plans: list[ShardPlan] = []
    for split in SPLITS:
        current: list[WorkItem] = []
        size = 1024
        for it in (i for i in items if split_of(i.source_id, cfg.val_fraction) == split):
            n = estimated_bytes(it, cfg)
            if current and (len(current) >= cfg.shard_max_samples or size + n > cfg.shard_max_bytes):
                plans.append(ShardPlan(split, len([p for p in plans if p.split == split]), current))
                current, size = [], 1024
            current.append(it)
            size += n
        if current:
            plans.append(ShardPlan(split, len([p for p in plans if p.split == split]), current))
    return plans


def run_prepare(cfg: PrepareConfig, seed: int = 0, overwrite: bool = False, progress: bool = True) -> PrepareSummary:
    """Write (or complete) the shard directory `cfg.out_dir`. Raises DataError for unusable input, an
    out_dir that is not a usable directory or holds another stage's output or another config's shards,
    or an empty result. A KeyboardInterrupt stops the workers; finished shards are kept for a re-run."""
    start = time.perf_counter()
    out = Path(cfg.out_dir)
    state = out / STATE_DIR
    digest = config_hash(cfg, seed)
    _make_out_dir(out)
    _check_stage(out)
    if overwrite:
        _check_recorded(out, "refusing to delete them; use a new data.out_dir")
        _clear(out)
    _check_owner(out, digest)

    items, rejects = list_work(cfg)
    if not items:
        raise DataError(f"{cfg.source}: no usable inputs ({_rejects_note(out, rejects)})")
    plans = plan_shards(items, cfg)
    for p in plans:
        p.inputs = inputs_digest(p)
    planned = {p.name for p in plans}
    stale = [p for p in out.iterdir() if SHARD_RE.match(p.name) and p.name not in planned]
    records: dict[str, ShardRecord] = {}
    todo = []
    for p in plans:
        rec = _load_record(out, p)
        if rec is None:
            todo.append(p)
        else:
            records[p.name] = rec
    if todo or stale:
        (out / MANIFEST).unlink(missing_ok=True)  # only a finished run has a manifest
    data = {k: v for k, v in to_dict(cfg).items() if k != "workers"}  # so that --workers alone rewrites nothing
    _write_if_changed(state / "config.json", json_bytes({"config_hash": digest, "seed": seed, "data": data}))
    _remove_stale(out, planned)

    bar = tqdm(
        total=sum(len(p.items) for p in plans),
        initial=sum(len(p.items) for p in plans if p.name in records),
        unit="clip",
        desc=f"prepare {cfg.source}",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        if cfg.workers == 1 or len(todo) <= 1:
            maker = SampleMaker(cfg, seed)
            for p in todo:
                records[p.name] = _write_shard(p, maker, out, cfg, on_item=lambda: bar.update(1))
        else:
            # closing(): the workers are stopped before the temp files are removed below, wherever Ctrl-C lands
            with contextlib.closing(_run_workers(todo, cfg, seed, min(cfg.workers, len(todo)))) as results:
                for rec in results:
                    records[rec.name] = rec
                    bar.update(len(rec.planned))
    except BaseException:
        # The workers are stopped and joined. One stopped between creating a temp file and its own cleanup leaves
        # the file behind, so the temp files go here too.
        _remove_temp(out)
        raise
    finally:
        bar.close()

    rejects += [Reject(**r) for p in plans for r in records[p.name].rejects]
    _write_if_changed(out / REJECTS, _rejects_bytes(rejects))
    splits = {s: {"count": 0, "shards": []} for s in SPLITS}
    for p in plans:
        rec = records[p.name]
        if rec.count:
            splits[p.split]["shards"].append({"name": p.name, "count": rec.count, "sha256": rec.sha256})
            splits[p.split]["count"] += rec.count
    total = sum(s["count"] for s in splits.values())
    if not total:
        raise DataError(f"{cfg.source}: every input was rejected ({len(rejects)}, see {out / REJECTS})")
    manifest = {
        "format": FORMAT,
        "stage": "prepare",
        "source": cfg.source,
        "geometry": cfg.geometry,
        "config_hash": digest,
        "splits": splits,
        "rejects": len(rejects),
    }
    old = _read_json(out / MANIFEST)
    if old and {k: v for k, v in old.items() if k != "created"} == manifest:
        manifest = old  # nothing changed: keep the file (and its creation time) as is
    else:
        manifest["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_json_atomic(out / MANIFEST, manifest)
    return PrepareSummary(
        str(out),
        {s: splits[s]["count"] for s in SPLITS},
        {s: len(splits[s]["shards"]) for s in SPLITS},
        len(rejects),
        written=len(todo),
        skipped=len(plans) - len(todo),
        processed=sum(len(p.items) for p in todo),
        seconds=time.perf_counter() - start,
        manifest=manifest,
    )


def _write_shard(plan: ShardPlan, maker: SampleMaker, out: Path, cfg: PrepareConfig, on_item=None) -> ShardRecord:
    rejects: list[dict[str, str]] = []
    writer = ShardWriter(out / plan.name, max_samples=cfg.shard_max_samples, max_bytes=cfg.shard_max_bytes)
    try:
        for it in plan.items:
            result = maker.make(it)
            if isinstance(result, Reject):
                rejects.append(result.to_json())
            else:
                writer.write(it.key, result)
            if on_item:
                on_item()
    except BaseException:
        writer.abort()
        raise
    sha256 = ""
    if writer.count:
        writer.close()
        sha256 = writer.sha256
    else:  # every input of this shard was rejected: no empty tar
        writer.abort()
        (out / plan.name).unlink(missing_ok=True)
    rec = ShardRecord(plan.name, writer.count, rejects, [it.key for it in plan.items], plan.inputs, sha256)
    write_json_atomic(out / STATE_DIR / f"{plan.name}.json", rec.__dict__)
    return rec


def _run_workers(todo: list[ShardPlan], cfg: PrepareConfig, seed: int, n: int) -> Iterator[ShardRecord]:
    """Write the shards of `todo` in `n` worker processes, yielding each record as it is done.

    Not multiprocessing.Pool: each worker has a pipe of its own, so a worker that dies (SIGKILL, out of memory) is
    an error naming it, and stopping the workers never waits on a queue lock that a dead worker held (Pool then hangs
    for ever). Leaving the generator early (an error, Ctrl-C) stops the workers: SIGTERM, then SIGKILL after 10 s."""
    ctx = mp.get_context("spawn")  # fork is unsafe once a caller has imported torch / started threads
    workers: dict[Any, Any] = {}  # parent end of the pipe -> process
    pending, busy = list(todo), {}  # conn -> the plan it is writing

    def died(conn, writing: bool) -> DataError:
        proc = workers[conn]
        proc.join(5)
        where = f"while writing {busy[conn].name}" if writing else "between two shards"
        return DataError(f"a prepare worker died (exit code {proc.exitcode}) {where}, e.g. killed for memory; "
                         "finished shards are kept, run the same command again (perhaps with fewer data.workers)")

    def give_work(conn) -> None:
        if pending:
            busy[conn] = pending.pop(0)
            try:
                conn.send(busy[conn])
            except OSError:  # broken pipe: it died after its last result
                raise died(conn, writing=False) from None

    done = False
    try:
        for _ in range(n):
            conn, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, cfg, seed, os.getpid()), daemon=True)
            # SIGINT blocked while the child starts (it inherits the mask): a Ctrl-C then would print a child
            # traceback from its imports; the worker ignores SIGINT once set up, the parent stops it
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                proc.start()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                child.close()
            workers[conn] = proc
        for conn in workers:
            give_work(conn)
        while busy:
            for conn in mp_connection.wait(list(busy)):  # a result, or EOF when the worker died
                try:
                    ok, value = conn.recv()
                except (EOFError, OSError):
                    raise died(conn, writing=True) from None
                if not ok:
                    raise value
                yield value
                del busy[conn]
                give_work(conn)
        for conn in workers:
            try:
                conn.send(None)  # done: the workers return
            except OSError:
                pass
        done = True
    finally:
        for proc in workers.values():
            if done:
                proc.join(5)  # they are returning on their own
            if proc.is_alive():
                proc.terminate()
        for proc in workers.values():
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _worker_main(conn, cfg: PrepareConfig, seed: int, parent: int) -> None:
    """A prepare worker: plans in, (True, record) or (False, exception) out, until None or the parent is gone."""
    try:
        _init_worker(cfg, seed, parent)
        setup_error = None
    except Exception as e:  # reported as the answer to the first plan, raised again in the parent
        setup_error = e
    while True:
        try:
            plan = conn.recv()
        except (EOFError, OSError):  # the parent is gone or stopped us
            return
        if plan is None:
            return
        if setup_error is not None:
            result = (False, setup_error)
        else:
            try:
                result = (True, _worker_task(plan))
            except Exception as e:  # raised again in the parent (as Pool did)
                result = (False, e)
        if not result[0]:
            try:  # an exception that pickles but cannot be rebuilt would surface as an unrelated TypeError
                pickle.loads(pickle.dumps(result[1]))
            except Exception:
                result = (False, RuntimeError(f"{type(result[1]).__name__}: {result[1]}"))
        try:
            conn.send(result)
        except (EOFError, OSError):
            return


_worker: dict[str, Any] = {}


def _init_worker(cfg: PrepareConfig, seed: int, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    signal.signal(signal.SIGTERM, _worker_exit)  # from the parent when it stops: unwind so the shard's temp file goes
    _exit_with_parent(parent)
    _worker.update(cfg=cfg, maker=SampleMaker(cfg, seed))


def _worker_exit(signum, frame):
    # Unwind, so that the shard writer removes its temp file. Not again once the worker is in its exit handlers (a
    # process-group SIGTERM, then the parent's): raising there prints a traceback. Not SIG_IGN after the first
    # either: a first SystemExit swallowed inside a __del__ would leave a worker that only SIGKILL stops.
    if getattr(mp_util, "_exiting", False):
        return
    raise SystemExit(128 + signum)


def _exit_with_parent(parent: int) -> None:
    """Linux: get SIGTERM when the parent dies (even by SIGKILL), so no orphan goes on writing shards."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker_task(plan: ShardPlan) -> ShardRecord:
    cfg = _worker["cfg"]
    return _write_shard(plan, _worker["maker"], Path(cfg.out_dir), cfg)


def finished_shards(out_dir: str | Path) -> int:
    """Shards (including all-rejected ones) that a re-run of the same command will skip."""
    return len(list((Path(out_dir) / STATE_DIR).glob("*.tar.json")))


def _load_record(out: Path, plan: ShardPlan) -> ShardRecord | None:
    """The shard's record when it is complete and holds exactly the planned items, else None."""
    data = _read_json(out / STATE_DIR / f"{plan.name}.json")
    if not data:
        return None
    try:
        rec = ShardRecord(**data)
    except TypeError:
        return None
    if rec.planned != [it.key for it in plan.items]:
        return None
    if rec.count and not (out / plan.name).is_file():
        return None
    if "inputs" not in data:  # written before records had inputs and sha256: trusted, as that version did
        rec.inputs = plan.inputs
        if rec.count:
            with open(out / plan.name, "rb") as f:
                rec.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        write_json_atomic(out / STATE_DIR / f"{plan.name}.json", rec.__dict__)
    if rec.inputs != plan.inputs or (rec.count and not rec.sha256):
        return None
    return rec


def inputs_digest(plan: ShardPlan) -> str:
    """What a shard is made from: its items and, for file inputs, their captions, attributes, size and mtime, so that
    a resumed run redoes a shard whose caption file or video changed (a finished shard is never read back)."""
    h = hashlib.sha256()
    for it in plan.items:
        row: list[Any] = [it.key, it.index, it.path, it.captions, it.attributes]
        if it.path is not None:
            try:
                st = os.stat(it.path)
                row += [st.st_size, st.st_mtime_ns]
            except OSError:
                row.append(None)
        h.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")
    return h.hexdigest()


def _make_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: unusable data.out_dir (exists and is not a directory)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: unusable data.out_dir ({e.strerror or e})") from None
    try:  # creating a file is the test that holds for root too (os.access says yes to /proc and /sys)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise DataError(f"{out}: unusable data.out_dir (not writable: {e.strerror or e})") from None


def _check_stage(out: Path) -> None:
    """Refuse a directory written by a later stage (embed copies the raw manifest, config_hash included)."""
    stage = (_read_json(out / MANIFEST) or {}).get("stage", "prepare")
    if stage != "prepare":
        raise DataError(
            f"{out}: holds the {stage} stage's output (manifest.json stage {stage!r}), not prepare's; "
            "use another data.out_dir"
        )


def _check_recorded(out: Path, advice: str) -> None:
    """Shards without this stage's records (`.prepare/config.json`) are someone else's."""
    if not (out / STATE_DIR / "config.json").is_file() and _shard_files(out):
        raise DataError(f"{out}: holds shards this stage did not record; {advice}")


def _check_owner(out: Path, digest: str) -> None:
    prev = _read_json(out / STATE_DIR / "config.json") or _read_json(out / MANIFEST)
    if prev and prev.get("config_hash") != digest:
        if not _shard_files(out):  # e.g. a run whose every input was rejected: nothing to keep
            _clear(out)
            return
        raise DataError(
            f"{out}: holds shards of a different data config (hash {str(prev.get('config_hash'))[:12]} "
            f"!= {digest[:12]}); use a new data.out_dir or --overwrite"
        )
    if not prev:
        _check_recorded(out, "use a new data.out_dir")


def _shard_files(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if SHARD_RE.match(p.name)] if out.is_dir() else []


def _clear(out: Path) -> None:
    """Remove what this stage writes (and nothing else) from out_dir."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if (
            SHARD_RE.match(p.name)
            or p.name in (MANIFEST, REJECTS)
            or _is_temp(p)
        ):
            p.unlink()
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)


def _is_temp(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(".tmp")


def _remove_temp(out: Path) -> None:
    """Temp files of an unfinished shard or record (one run per out_dir at a time)."""
    for d in (out, out / STATE_DIR):
        for p in d.iterdir() if d.is_dir() else ():
            if _is_temp(p):
                p.unlink(missing_ok=True)


def _remove_stale(out: Path, planned: set[str]) -> None:
    """Shards (and records) of an earlier listing that the current plan no longer has, and leftover temp files."""
    _remove_temp(out)
    for p in out.iterdir():
        if SHARD_RE.match(p.name) and p.name not in planned:
            p.unlink()
    for p in (out / STATE_DIR).glob("*.tar.json"):
        if p.name.removesuffix(".json") not in planned:
            p.unlink()


def _rejects_bytes(rejects: list[Reject]) -> bytes:
    lines = [
        json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) for r in sorted(rejects, key=lambda r: r.source_id)
    ]
    return ("\n".join(lines) + "\n" if lines else "").encode()


def _rejects_note(out: Path, rejects: list[Reject]) -> str:
    """Where a failed run's rejects are: rejects.jsonl, unless that belongs to a finished dataset (kept as is)."""
    if not (out / MANIFEST).is_file():
        _write_if_changed(out / REJECTS, _rejects_bytes(rejects))
        return f"{len(rejects)} rejected, see {out / REJECTS}"
    first = f", first: {rejects[0].source_id}: {rejects[0].reason}" if rejects else ""
    return f"{len(rejects)} rejected{first}; the finished dataset in {out} is left as it was"


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write that leaves an identical file untouched (a finished re-run writes nothing)."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    write_bytes_atomic(path, data)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
