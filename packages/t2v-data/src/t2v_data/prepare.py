"""The prepare stage: any source → train/val WebDataset shards + manifest.json + rejects.jsonl.

The work is planned up front (deterministic shard contents), so shards can be written by parallel workers
and a re-run skips every shard already complete: a shard is complete once its tar was renamed into place
and its record (`.prepare/<shard>.json`: count, rejects, planned keys) written. `manifest.json` is last."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import to_dict
from .errors import DataError
from .file_sources import Reject, WorkItem
from .prepare_config import PrepareConfig, config_hash
from .shards import FORMAT, MANIFEST, REJECTS, SPLITS, ShardWriter, shard_name, write_bytes_atomic, write_json_atomic
from .sources import SampleMaker, estimated_bytes, list_work

STATE_DIR = ".prepare"
SHARD_RE = re.compile(r"^(train|val)-\d{6}\.tar$")


@dataclass
class ShardPlan:
    split: str
    index: int
    items: list[WorkItem]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


@dataclass
class ShardRecord:
    name: str
    count: int
    rejects: list[dict[str, str]]
    planned: list[str]


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
    out_dir holding another config's shards, or an empty result."""
    start = time.perf_counter()
    out = Path(cfg.out_dir)
    state = out / STATE_DIR
    digest = config_hash(cfg, seed)
    if overwrite:
        _clear(out)
    _check_owner(out, digest)

    items, rejects = list_work(cfg)
    if not items:
        _write_rejects(out, rejects)
        raise DataError(f"{cfg.source}: no usable inputs ({len(rejects)} rejected, see {out / REJECTS})")
    plans = plan_shards(items, cfg)
    write_json_atomic(state / "config.json", {"config_hash": digest, "seed": seed, "data": to_dict(cfg)})
    _remove_stale(out, {p.name for p in plans})

    records: dict[str, ShardRecord] = {}
    todo = []
    for p in plans:
        rec = _load_record(out, p)
        if rec is None:
            todo.append(p)
        else:
            records[p.name] = rec
    bar = tqdm(
        total=sum(len(p.items) for p in plans),
        initial=sum(len(p.items) for p in plans if p.name in records),
        unit="clip",
        desc=f"prepare {cfg.source}",
        disable=not progress,
        dynamic_ncols=True,
    )
    if cfg.workers == 1 or len(todo) <= 1:
        maker = SampleMaker(cfg, seed)
        for p in todo:
            records[p.name] = _write_shard(p, maker, out, cfg, on_item=lambda: bar.update(1))
    else:
        ctx = mp.get_context("spawn")  # fork is unsafe once a caller has imported torch / started threads
        with ctx.Pool(min(cfg.workers, len(todo)), initializer=_init_worker, initargs=(cfg, seed)) as pool:
            for rec in pool.imap_unordered(_worker_task, todo):
                records[rec.name] = rec
                bar.update(len(rec.planned))
    bar.close()

    rejects += [Reject(**r) for p in plans for r in records[p.name].rejects]
    _write_rejects(out, rejects)
    splits = {s: {"count": 0, "shards": []} for s in SPLITS}
    for p in plans:
        rec = records[p.name]
        if rec.count:
            splits[p.split]["shards"].append({"name": p.name, "count": rec.count})
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
    if writer.count:
        writer.close()
    else:  # every input of this shard was rejected: no empty tar
        writer.abort()
        (out / plan.name).unlink(missing_ok=True)
    rec = ShardRecord(plan.name, writer.count, rejects, [it.key for it in plan.items])
    write_json_atomic(out / STATE_DIR / f"{plan.name}.json", rec.__dict__)
    return rec


_worker: dict[str, Any] = {}


def _init_worker(cfg: PrepareConfig, seed: int) -> None:
    _worker.update(cfg=cfg, maker=SampleMaker(cfg, seed))


def _worker_task(plan: ShardPlan) -> ShardRecord:
    cfg = _worker["cfg"]
    return _write_shard(plan, _worker["maker"], Path(cfg.out_dir), cfg)


def _load_record(out: Path, plan: ShardPlan) -> ShardRecord | None:
    """The shard's record when it is complete and holds exactly the planned items, else None."""
    data = _read_json(out / STATE_DIR / f"{plan.name}.json")
    if not data:
        return None
    try:
        rec = ShardRecord(**data)
    except TypeError:
        return None
    if rec.planned != [it.key for it in plan.items] or (rec.count and not (out / plan.name).is_file()):
        return None
    return rec


def _check_owner(out: Path, digest: str) -> None:
    prev = _read_json(out / STATE_DIR / "config.json") or _read_json(out / MANIFEST)
    if prev and prev.get("config_hash") != digest:
        raise DataError(
            f"{out}: holds shards of a different data config (hash {str(prev.get('config_hash'))[:12]} "
            f"!= {digest[:12]}); use a new data.out_dir or --overwrite"
        )
    if not prev and out.is_dir() and any(SHARD_RE.match(p.name) for p in out.iterdir()):
        raise DataError(f"{out}: holds shards this stage did not record; use a new data.out_dir or --overwrite")


def _clear(out: Path) -> None:
    """Remove what this stage writes (and nothing else) from out_dir."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if (
            SHARD_RE.match(p.name)
            or p.name in (MANIFEST, REJECTS)
            or (p.name.startswith(".") and p.name.endswith(".tmp"))
        ):
            p.unlink()
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)


def _remove_stale(out: Path, planned: set[str]) -> None:
    """Shards (and records) of an earlier listing that the current plan no longer has."""
    for p in out.iterdir():
        if (SHARD_RE.match(p.name) and p.name not in planned) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            p.unlink()
    for p in (out / STATE_DIR).glob("*.tar.json"):
        if p.name.removesuffix(".json") not in planned:
            p.unlink()


def _write_rejects(out: Path, rejects: list[Reject]) -> None:
    lines = [
        json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) for r in sorted(rejects, key=lambda r: r.source_id)
    ]
    write_bytes_atomic(out / REJECTS, ("\n".join(lines) + "\n" if lines else "").encode())


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
