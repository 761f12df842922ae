"""The prepare stage: any source → train/val WebDataset shards + manifest.json + rejects.jsonl.

The work is planned up front (deterministic shard contents), so shards can be written by parallel workers
and a re-run skips every shard already complete: a shard is complete once its tar was renamed into place
and its record (`.prepare/<shard>.json`: count, rejects, planned keys) written. `manifest.json` is last."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing as mp
import multiprocessing.util as mp_util
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from t2v_model.config import DataGeometry
from t2v_model.errors import DataError
from t2v_model.files import TEMP_SUFFIX, json_bytes, read_json, write_if_changed, write_json_atomic
from t2v_model.schema import to_dict

from .prepare_config import PrepareConfig, config_hash
from .registry import SOURCES
from .shards import (
    MANIFEST,
    REJECTS,
    SHARD_RE,
    SPLITS,
    Manifest,
    ShardEntry,
    ShardWriter,
    Split,
    rejects_bytes,
    shard_name,
)
from .sources import Made, Reject, WorkItem, estimated_bytes, split_of

STATE_DIR = ".prepare"


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
    fps_sum: float = 0.0  # of its samples' fps: the manifest's fps is their mean


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
    manifest: Manifest | None = field(repr=False, default=None)
    warnings: list[str] = field(default_factory=list)

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        per = ", ".join(f"{s} {self.counts[s]} clips in {self.shards[s]} shards" for s in SPLITS
                        if s != "test" or self.counts[s])
        return [
            f"wrote {self.out_dir}: {per}",
            f"rejects {self.rejects} (see {Path(self.out_dir) / REJECTS}); shards written {self.written}, "
            f"already complete {self.skipped}; {self.seconds:.1f} s, {self.clips_per_s:.1f} clips/s",
        ]


def item_split(item: WorkItem, cfg: PrepareConfig) -> str:
    """The split the source prescribes (MSR-VTT's official one), else a stable hash of the source id."""
    return item.split or split_of(item.source_id, cfg.val_fraction)


def plan_shards(items: list[WorkItem], cfg: PrepareConfig) -> list[ShardPlan]:
    """Pack items, in listing order and per split, into shards within shard_max_samples / shard_max_bytes
    (a single item larger than the byte limit gets a shard of its own)."""
    plans: list[ShardPlan] = []
    for split in SPLITS:
        current: list[WorkItem] = []
        size = 1024
        per_item = cfg.samples_per_item  # an upper bound: a video may give fewer clips
        for it in (i for i in items if item_split(i, cfg) == split):
            n = estimated_bytes(it, cfg)
            if current and ((len(current) + 1) * per_item > cfg.shard_max_samples
                            or size + n > cfg.shard_max_bytes):
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

    source = SOURCES[cfg.source]
    items, rejects = source.list_work(cfg)
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
    write_if_changed(state / "config.json", json_bytes({"config_hash": digest, "seed": seed, "data": data}))
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
            make = source.maker(cfg, seed)
            for p in todo:
                records[p.name] = _write_shard(p, make, out, cfg, on_item=lambda: bar.update(1))
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
    write_if_changed(out / REJECTS, rejects_bytes(r.to_json() for r in rejects))
    splits: dict[str, Split] = {}
    for p in plans:
        rec = records[p.name]
        if rec.count:
            split = splits.setdefault(p.split, Split())
            split.shards.append(ShardEntry(p.name, rec.count, rec.sha256))
            split.count += rec.count
    if not splits:
        raise DataError(f"{cfg.source}: every input was rejected ({len(rejects)}, see {out / REJECTS})")
    # clips play at data.fps; spread clips at their own effective fps: the model's videos play at the mean
    fps = round(sum(records[p.name].fps_sum for p in plans) / sum(s.count for s in splits.values()), 3)
    geometry = DataGeometry(frames=cfg.frames, height=cfg.h, width=cfg.w, channels=3, fps=fps)
    manifest = Manifest(stage="prepare", source=cfg.source, geometry=geometry, config_hash=digest, splits=splits,
                        rejects=len(rejects))
    old = _read_manifest(out)
    if old is not None and old == dataclasses.replace(manifest, created=old.created):
        manifest = old  # nothing changed: keep the file (and its creation time) as is
    else:
        manifest.write(out)
    warnings = []
    if not manifest.count("val"):
        how = ("the source's own split put no video in val" if any(it.split for it in items) else
               f"data.val_fraction {cfg.val_fraction} of {len(items)} inputs drew none; raise it")
        warnings.append(f"no val clips in {out}: training reports no val loss and evaluate has nothing to score "
                        f"({how})")
    return PrepareSummary(
        str(out),
        {s: manifest.count(s) for s in SPLITS},
        {s: len(manifest.shards(s)) for s in SPLITS},
        len(rejects),
        written=len(todo),
        skipped=len(plans) - len(todo),
        processed=sum(len(p.items) for p in todo),
        seconds=time.perf_counter() - start,
        manifest=manifest,
        warnings=warnings,
    )


def _write_shard(plan: ShardPlan, make: Callable[[WorkItem], list[Made] | Reject], out: Path, cfg: PrepareConfig,
                 on_item=None) -> ShardRecord:
    rejects: list[dict[str, str]] = []
    writer = ShardWriter(out / plan.name)  # plan_shards sized it
    fps_sum = 0.0
    try:
        for it in plan.items:
            result = make(it)
            if isinstance(result, Reject):
                rejects.append(result.to_json())
            else:
                for sample in result:
                    writer.write(sample.key, sample.members)
                    fps_sum += sample.fps
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
    rec = ShardRecord(plan.name, writer.count, rejects, [it.key for it in plan.items], plan.inputs, sha256, fps_sum)
    write_json_atomic(out / STATE_DIR / f"{plan.name}.json", rec.__dict__)
    return rec


def _run_workers(todo: list[ShardPlan], cfg: PrepareConfig, seed: int, n: int) -> Iterator[ShardRecord]:
    """Write the shards of `todo` in `n` worker processes, yielding each record as it is done. A worker that dies
    (SIGKILL, out of memory) is a DataError naming the shards in flight. Leaving early (an error, Ctrl-C, SIGTERM)
    cancels the shards not started and stops the workers (SIGTERM, so the shard being written removes its temp
    file; SIGKILL after 10 s): none goes on writing."""
    pool = ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"),  # fork is unsafe once torch / threads run
                               initializer=_init_worker, initargs=(cfg, seed, os.getpid()))
    # the workers start inside submit(), and inherit this mask: a Ctrl-C during their imports would print their
    # tracebacks. They ignore SIGINT once set up; the parent stops them
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        futures = {pool.submit(_worker_task, plan): plan for plan in todo}
        workers = mp.active_children()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    done = False
    try:
        for future in as_completed(futures):
            try:
                record = future.result()
            except BrokenProcessPool:
                raise _died(workers, Path(cfg.out_dir)) from None
            except SystemExit:  # the worker unwound from a SIGTERM (to the whole process group, say): a stop
                raise KeyboardInterrupt from None
            yield record
        done = True
    finally:
        pool.shutdown(wait=done, cancel_futures=True)
        if not done:
            _stop(workers)
            pool.shutdown(wait=True)


def _died(workers: list, out: Path) -> BaseException:
    """The error for a worker that died: its exit code, and the shard it was writing, which is the one whose temp
    file is left once the pool has stopped the others (each removes its own on SIGTERM). Workers that all ended by
    SIGTERM were stopped from outside, as the run is: an interruption."""
    deadline = time.monotonic() + 10
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    # the pool's own thread reaps the same processes: an exit code can show up a moment after join returns
    while any(w.exitcode is None for w in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    codes = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
    # the pool SIGTERMs the other workers once one died: report the code of the one that died on its own
    own = [c for c in codes if c not in (-signal.SIGTERM, 128 + signal.SIGTERM)]
    if codes and not own:
        return KeyboardInterrupt()
    codes = own or codes
    code = f" (exit code {codes[0]})" if codes else ""
    writing = sorted(m.group(1) for p in out.iterdir() if (m := _TEMP_SHARD.match(p.name)))
    where = f" while writing {' and '.join(writing)}" if writing else " between two shards"
    return DataError(f"a prepare worker died{code}{where}, e.g. killed for memory; finished shards are kept, run "
                     f"the same command again (perhaps with fewer data.workers)")


_TEMP_SHARD = re.compile(r"^\.((?:train|val|test)-\d{6}\.tar)\..*\.tmp$")  # a ShardWriter's temp file


def _stop(workers: list) -> None:
    for w in workers:
        if w.is_alive():
            w.terminate()
    for w in workers:
        w.join(10)
        if w.is_alive():
            w.kill()
            w.join()


_worker: dict[str, Any] = {}


def _init_worker(cfg: PrepareConfig, seed: int, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    signal.signal(signal.SIGTERM, _worker_exit)  # from the parent when it stops: unwind so the shard's temp file goes
    _exit_with_parent(parent)
    _worker.update(cfg=cfg, seed=seed)


def _worker_exit(signum, frame):
    # Unwind, so that the shard writer removes its temp file. Not again once the worker is in its exit handlers (a
    # process-group SIGTERM, then the parent's): raising there prints a traceback.
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
    if "make" not in _worker:  # here rather than in the initializer: its error then reaches the parent as raised
        _worker["make"] = SOURCES[cfg.source].maker(cfg, _worker["seed"])
    return _write_shard(plan, _worker["make"], Path(cfg.out_dir), cfg)


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
    if rec.inputs != plan.inputs or (rec.count and not rec.sha256):
        return None
    return rec


def inputs_digest(plan: ShardPlan) -> str:
    """What a shard is made from: its items and, for file inputs, their captions, attributes, size and mtime, so that
    a resumed run redoes a shard whose caption file or video changed (a finished shard is never read back)."""
    h = hashlib.sha256()
    for it in plan.items:
        row: list[Any] = [it.key, it.index, it.path, it.captions, it.attributes, it.start, it.end, it.split]
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
    return p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)


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


def _rejects_note(out: Path, rejects: list[Reject]) -> str:
    """Where a failed run's rejects are: rejects.jsonl, unless that belongs to a finished dataset (kept as is)."""
    if not (out / MANIFEST).is_file():
        write_if_changed(out / REJECTS, rejects_bytes(r.to_json() for r in rejects))
        return f"{len(rejects)} rejected, see {out / REJECTS}"
    first = f", first: {rejects[0].source_id}: {rejects[0].reason}" if rejects else ""
    return f"{len(rejects)} rejected{first}; the finished dataset in {out} is left as it was"


def _read_json(path: Path) -> dict | None:
    """A JSON object this stage wrote earlier, or None when there is none (or it is damaged: then it is redone)."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_manifest(out: Path) -> Manifest | None:
    try:
        return Manifest.read(out)
    except DataError:
        return None
