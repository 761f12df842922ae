"""The embed stage: raw shards in, pre-embedded shards out (docs/FORMATS.md), every distinct caption encoded once.

Three passes over the pending shards: (1) read captions and find bad samples, (2) encode the captions the cache
lacks, length-sorted and batched, (3) write each output shard (temp file + rename) from the cache. A shard whose
output and `.parts/<name>.json` record exist with the same encoder settings is skipped, so an interrupted run
resumes where it stopped; the manifest is removed at the start and written last.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from t2v_model.text_encoder import TextEncoder, describe_text_encoder, load_text_encoder

from .atomic import write_json_atomic, write_jsonl_atomic
from .cache import CachedEmbedding, EmbeddingCache
from .config import EmbedConfig
from .shards import MANIFEST, RawSample, ShardError, ShardRef, iter_tar, npy_bytes, read_manifest, shard_refs
from .shards import write_tar_atomic

PARTS = ".parts"
REJECTS = "rejects.jsonl"
_ADDED = ("text.npy", "tokens.npy", "mask.npy")


class SampleError(ValueError):
    """One bad sample: reported to rejects.jsonl and skipped."""


@dataclass
class EmbedSummary:
    out_dir: str
    encoder: dict[str, Any]
    samples: int = 0
    rejects: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    captions: int = 0  # distinct captions in the shards written by this run
    encoded: int = 0  # of those, computed by the encoder (the rest came from the cache)
    truncated: int = 0  # distinct captions cut to max_length tokens
    encode_seconds: float = 0.0
    seconds: float = 0.0
    splits: dict[str, int] = field(default_factory=dict)

    @property
    def cache_hits(self) -> int:
        return self.captions - self.encoded

    def format(self) -> str:
        rate = f"{self.encoded / self.encode_seconds:.0f} captions/s" if self.encode_seconds > 0 else "-"
        splits = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        return "\n".join([
            f"embedded shards: {self.out_dir}  ({splits}; {self.rejects} rejected)",
            f"text encoder: {self.encoder['id']} ({self.encoder['dim']}-d, weights {self.encoder['weights_hash']}, "
            f"max_length {self.encoder['max_length']}, tokens {self.encoder['tokens']})",
            f"shards: {self.shards_written} written, {self.shards_skipped} already done",
            f"captions: {self.captions} distinct, {self.encoded} encoded ({rate}), {self.cache_hits} from cache, "
            f"{self.truncated} truncated",
            f"time: {self.seconds:.1f} s",
        ])


def parse_captions(sample: RawSample) -> list[str]:
    """The sample's captions, or SampleError saying what is wrong with it."""
    if sample.get("video.npy") is None:
        raise SampleError("missing video.npy")
    raw = sample.get("meta.json")
    if raw is None:
        raise SampleError("missing meta.json")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SampleError(f"meta.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SampleError(f"meta.json must be an object, got {type(meta).__name__}")
    captions = meta.get("captions")
    if not isinstance(captions, list) or not captions:
        raise SampleError("meta.json captions must be a non-empty list")
    for i, c in enumerate(captions):
        if not isinstance(c, str) or not c.strip():
            raise SampleError(f"meta.json captions[{i}] must be a non-empty string, got {c!r}")
    return captions


def _source_id(sample: RawSample) -> str:
    try:
        sid = json.loads(sample.get("meta.json") or b"{}").get("source_id")
    except (ValueError, AttributeError):
        sid = None
    return sid if isinstance(sid, str) else sample.key


@dataclass
class _ShardScan:
    ref: ShardRef
    captions: list[str]  # distinct captions of the good samples
    rejects: list[dict[str, str]]


def _scan(in_dir: Path, ref: ShardRef) -> _ShardScan:
    captions: dict[str, None] = {}
    rejects = []
    seen = 0
    for sample in iter_tar(in_dir / ref.name):
        seen += 1
        try:
            captions.update(dict.fromkeys(parse_captions(sample)))
        except SampleError as e:
            rejects.append({"source_id": _source_id(sample), "path": f"{in_dir / ref.name}:{sample.key}",
                            "reason": str(e)})
    if seen != ref.count:  # a tar cut off mid-way still reads, as fewer samples
        raise ShardError(f"{in_dir / ref.name}: {seen} samples but the manifest lists {ref.count} (truncated or "
                         f"replaced shard? re-run the prepare stage)")
    return _ShardScan(ref, list(captions), rejects)


def _embedded_samples(in_dir: Path, ref: ShardRef, cache: EmbeddingCache, tokens: bool,
                      max_length: int) -> Iterator[RawSample]:
    """The shard's good samples with text.npy (and tokens.npy/mask.npy) appended; raw members untouched."""
    for sample in iter_tar(in_dir / ref.name):
        try:
            captions = parse_captions(sample)
        except SampleError:
            continue
        found = cache.get_many(captions, tokens)
        members = [(e, d) for e, d in sample.members if e not in _ADDED]
        members.append(("text.npy", npy_bytes(np.stack([found[c].pooled for c in captions]))))
        if tokens:
            toks = np.zeros((len(captions), max_length, cache.dim), dtype=np.float16)
            mask = np.zeros((len(captions), max_length), dtype=np.uint8)
            for i, c in enumerate(captions):
                n = len(found[c].tokens)
                toks[i, :n] = found[c].tokens
                mask[i, :n] = 1
            members += [("tokens.npy", npy_bytes(toks)), ("mask.npy", npy_bytes(mask))]
        yield RawSample(sample.key, members)


def _encode_missing(encoder: TextEncoder, cache: EmbeddingCache, texts: list[str], cfg: EmbedConfig,
                    progress: bool) -> float:
    """Encode `texts` (not in the cache) into the cache; returns the seconds spent."""
    texts = sorted(texts, key=len)  # similar lengths per batch -> little padding
    start = time.perf_counter()
    with tqdm(total=len(texts), desc="encoding captions", unit="caption", disable=not progress) as bar:
        for i in range(0, len(texts), cfg.batch_size):
            batch = texts[i : i + cfg.batch_size]
            out = encoder.encode(batch, tokens=cfg.tokens)
            pooled = out.pooled.numpy().astype(np.float16)
            entries = {}
            for j, text in enumerate(batch):
                entry = CachedEmbedding(pooled[j])
                if cfg.tokens:
                    n = int(out.mask[j].sum())
                    entry.tokens = out.tokens[j, :n].numpy().astype(np.float16)
                entries[text] = entry
            cache.put_many(entries)
            bar.update(len(batch))
    return time.perf_counter() - start


def run_embed(cfg: EmbedConfig, encoder: TextEncoder | None = None, progress: bool = True) -> EmbedSummary:
    """Run the embed stage for `cfg` (in_dir/out_dir must be resolved, see embed_config_from_experiment)."""
    t0 = time.perf_counter()
    if cfg.in_dir is None or cfg.out_dir is None:
        raise ShardError("embed: in_dir and out_dir must be set (use embed_config_from_experiment)")
    in_dir, out_dir = Path(cfg.in_dir), Path(cfg.out_dir)
    manifest = read_manifest(in_dir)
    if manifest.get("stage") not in (None, "prepare"):
        raise ShardError(f"{in_dir / MANIFEST}: stage is {manifest.get('stage')!r}; the embed stage reads raw "
                         f"(prepare) shards")
    refs = shard_refs(manifest)
    if encoder is not None and encoder.max_length != cfg.max_length:
        raise ShardError(f"embed.max_length: {cfg.max_length} but the given encoder cuts at {encoder.max_length}")

    def load() -> TextEncoder:
        return load_text_encoder(cfg.encoder, device=cfg.device, dtype=cfg.dtype, max_length=cfg.max_length,
                                 batch_size=cfg.batch_size)

    # finished shards are recognised without loading the model (~8 s): it is loaded only when there is work
    if encoder is None:
        info = describe_text_encoder(cfg.encoder, max_length=cfg.max_length, tokens=cfg.tokens)
        if info is None:
            encoder = load()
    if encoder is not None:
        info = encoder.info(tokens=cfg.tokens)

    if out_dir.exists() and not out_dir.is_dir():
        raise ShardError(f"{out_dir}: embed.out_dir exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    parts_dir = out_dir / PARTS

    def settings(ref: ShardRef) -> dict[str, Any]:
        # the raw shard's sha256 catches a caption edit of the same length, which its size alone does not
        extra = {"input_sha256": ref.sha256} if ref.sha256 else {}
        return {"text_encoder": info, "input_size": (in_dir / ref.name).stat().st_size,
                "input_config_hash": manifest.get("config_hash"), **extra}

    def done(ref: ShardRef) -> dict[str, Any] | None:
        part_path = parts_dir / f"{ref.name}.json"
        if not (out_dir / ref.name).is_file() or not part_path.is_file():
            return None
        try:
            part = json.loads(part_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        now = settings(ref)
        if part.get("settings") == now:
            return part
        legacy = {k: v for k, v in now.items() if k != "input_sha256"}
        if "input_sha256" in now and part.get("settings") == legacy:  # a record from before input_sha256: trusted,
            part["settings"] = now  # as that version did, and completed
            write_json_atomic(part_path, part)
            return part
        return None

    def partition() -> tuple[dict[str, dict[str, Any]], list[ShardRef]]:
        parts = {ref.name: part for ref in refs if (part := done(ref)) is not None}
        return parts, [ref for ref in refs if ref.name not in parts]

    parts, pending = partition()
    if pending and encoder is None:
        encoder = load()
        if encoder.info(tokens=cfg.tokens) != info:  # the description disagreed with the model: the model decides
            info = encoder.info(tokens=cfg.tokens)
            parts, pending = partition()
    summary = EmbedSummary(out_dir=str(out_dir), encoder=info)
    summary.shards_skipped = len(parts)

    scans = [_scan(in_dir, ref) for ref in tqdm(pending, desc="reading captions", unit="shard",
                                                disable=not progress or not pending)]
    captions = list(dict.fromkeys(c for s in scans for c in s.captions))
    summary.captions = len(captions)
    cut = {captions[i] for i in encoder.tokenize(captions)[1]} if captions else set()
    summary.truncated = len(cut)

    cache = EmbeddingCache(cfg.cache_dir, f"{info['id']}@{info['weights_hash']}", cfg.max_length, info["dim"])
    try:
        missing = cache.missing(captions, cfg.tokens)
        summary.encoded = len(missing)
        if missing:
            summary.encode_seconds = _encode_missing(encoder, cache, missing, cfg, progress)
        if scans:  # from the first shard rewritten on, only a finished run has a manifest
            (out_dir / MANIFEST).unlink(missing_ok=True)
        for scan in tqdm(scans, desc="writing shards", unit="shard", disable=not progress or not scans):
            count = write_tar_atomic(out_dir / scan.ref.name,
                                     _embedded_samples(in_dir, scan.ref, cache, cfg.tokens, cfg.max_length))
            part = {"settings": settings(scan.ref), "split": scan.ref.split, "count": count,
                    "rejects": scan.rejects, "truncated_captions": sum(c in cut for c in scan.captions)}
            write_json_atomic(parts_dir / f"{scan.ref.name}.json", part)
            parts[scan.ref.name] = part
            summary.shards_written += 1
    finally:
        cache.close()

    out_manifest, rejects = _write_index(out_dir, in_dir, manifest, refs, parts, info)
    summary.rejects = len(rejects)
    summary.samples = sum(s["count"] for s in out_manifest["splits"].values())
    summary.splits = {k: v["count"] for k, v in out_manifest["splits"].items()}
    summary.seconds = time.perf_counter() - t0
    return summary


def _write_index(out_dir: Path, in_dir: Path, manifest: dict[str, Any], refs: list[ShardRef],
                 parts: dict[str, dict[str, Any]], info: dict[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    """rejects.jsonl, then manifest.json (last): the raw manifest with this stage's counts and encoder block."""
    rejects = [r for ref in refs for r in parts[ref.name]["rejects"]]
    write_jsonl_atomic(out_dir / REJECTS, rejects)
    out = dict(manifest)
    out["stage"] = "embed"
    out["splits"] = {}
    for ref in refs:
        split = out["splits"].setdefault(ref.split, {"count": 0, "shards": []})
        split["count"] += parts[ref.name]["count"]
        split["shards"].append({"name": ref.name, "count": parts[ref.name]["count"]})
    out["rejects"] = len(rejects)
    out["text_encoder"] = info
    out["embed"] = {"in_dir": str(in_dir), "prepare_rejects": manifest.get("rejects", 0),
                    "truncated_captions": sum(p.get("truncated_captions", 0) for p in parts.values())}
    out["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(out_dir / MANIFEST, out)
    return out, rejects
