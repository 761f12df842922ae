"""The embed stage: raw shards in, pre-embedded shards out (docs/FORMATS.md), every distinct caption encoded once.

Three passes over the pending shards: (1) read every sample, checking it against the raw manifest (a malformed one is
a reject, skipped), and collect the captions, (2) encode the captions the cache lacks, length-sorted and batched,
(3) write each output shard from the cache. A shard whose output and `.parts/<name>.json` record exist with the same
encoder settings and input is skipped, so an interrupted run resumes where it stopped; the manifest is written last.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from t2v_data.shards import (
    MANIFEST,
    REJECTS,
    SHARD_RE,
    Manifest,
    SampleError,
    ShardEntry,
    ShardRef,
    ShardWriter,
    Split,
    decode_sample,
    embedded_members,
    read_shard,
    read_stage,
    rejects_bytes,
)
from t2v_model.config import TextEncoderInfo, describe_encoder
from t2v_model.errors import DataError
from t2v_model.files import read_json, write_bytes_atomic, write_json_atomic
from t2v_model.pipeline import resolve_device
from t2v_model.text_encoder import TextEncoder, describe_text_encoder, load_text_encoder

from .cache import CachedEmbedding, EmbeddingCache
from .config import EmbedConfig

PARTS = ".parts"


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
            f"text encoder: {describe_encoder(self.encoder, hash_chars=0)}",
            f"shards: {self.shards_written} written, {self.shards_skipped} already done",
            f"captions: {self.captions} distinct, {self.encoded} encoded ({rate}), {self.cache_hits} from cache, "
            f"{self.truncated} truncated",
            f"time: {self.seconds:.1f} s",
        ])


@dataclass
class _ShardScan:
    ref: ShardRef
    captions: list[str]  # distinct captions of the good samples
    rejects: list[dict[str, str]]
    bad: set[str]  # keys of the rejected samples


def _scan(manifest: Manifest, ref: ShardRef) -> _ShardScan:
    captions: dict[str, None] = {}
    rejects, bad = [], set()
    for key, members in read_shard(ref):
        try:
            sample = decode_sample(key, members, manifest, ref.path)
        except SampleError as e:
            rejects.append({"source_id": _source_id(key, members), "path": f"{ref.path}:{key}", "reason": e.reason})
            bad.add(key)
            continue
        captions.update(dict.fromkeys(sample.captions))
    return _ShardScan(ref, list(captions), rejects, bad)


def _source_id(key: str, members: dict[str, bytes]) -> str:
    """The sample's source id for rejects.jsonl, when its meta.json is readable enough to tell."""
    try:
        sid = json.loads(members.get("meta.json") or b"{}").get("source_id")
    except (ValueError, AttributeError):
        sid = None
    return sid if isinstance(sid, str) else key


def _embedded_samples(scan: _ShardScan, manifest: Manifest, cache: EmbeddingCache,
                      tokens: bool) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The shard's good samples, their raw members untouched, plus text.npy (and tokens.npy / mask.npy)."""
    for key, members in read_shard(scan.ref):
        if key in scan.bad:
            continue
        captions = decode_sample(key, members, manifest, scan.ref.path).captions
        found = cache.get_many(captions, tokens)
        text = np.stack([found[c].pooled for c in captions])
        toks = mask = None
        if tokens:  # padded to this sample's longest caption, not max_length: MSR-VTT's are ~10-25 tokens of 77
            length = max(len(found[c].tokens) for c in captions)
            toks = np.zeros((len(captions), length, cache.dim), dtype=np.float16)
            mask = np.zeros((len(captions), length), dtype=np.uint8)
            for i, c in enumerate(captions):
                n = len(found[c].tokens)
                toks[i, :n] = found[c].tokens
                mask[i, :n] = 1
        yield key, embedded_members(members, text, toks, mask)


def _encode_missing(encoder: TextEncoder, cache: EmbeddingCache, texts: list[str], cfg: EmbedConfig,
                    progress: bool) -> float:
    """Encode `texts` (not in the cache) into the cache; returns the seconds spent."""
    texts = sorted(texts, key=len)  # similar lengths per batch -> little padding
    start = time.perf_counter()
    with tqdm(total=len(texts), desc="encoding captions", unit="caption", disable=not progress) as bar:
        for i in range(0, len(texts), cfg.batch_size):
            batch = texts[i : i + cfg.batch_size]
            out = encoder.encode(batch, tokens=cfg.tokens, token_layer=cfg.token_layer)
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


def run_embed(cfg: EmbedConfig, encoder: TextEncoder | None = None, progress: bool = True,
              overwrite: bool = False) -> EmbedSummary:
    """Run the embed stage for `cfg` (in_dir/out_dir must be resolved, see embed_config_from_experiment). An
    out_dir holding shards embedded with other encoder settings is refused, unless `overwrite` (then they go)."""
    t0 = time.perf_counter()
    if cfg.in_dir is None or cfg.out_dir is None:
        raise DataError("embed: in_dir and out_dir must be set (use embed_config_from_experiment)")
    in_dir, out_dir = Path(cfg.in_dir), Path(cfg.out_dir)
    manifest = read_stage(in_dir, "prepare", "the embed stage reads raw (prepare) shards: set embed.in_dir")
    refs = manifest.shards()
    if encoder is not None and encoder.max_length != cfg.max_length:
        raise DataError(f"embed.max_length: {cfg.max_length} but the given encoder cuts at {encoder.max_length}")

    def load() -> TextEncoder:
        return load_text_encoder(cfg.encoder, device=resolve_device(cfg.device), dtype=cfg.dtype,
                                 max_length=cfg.max_length, batch_size=cfg.batch_size)

    # finished shards are recognised without loading the model (~8 s): it is loaded only when there is work
    if encoder is None:
        info = describe_text_encoder(cfg.encoder, max_length=cfg.max_length, tokens=cfg.tokens,
                                    token_layer=cfg.token_layer)
        if info is None:
            encoder = load()
    if encoder is not None:
        info = encoder.info(tokens=cfg.tokens, token_layer=cfg.token_layer)

    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: embed.out_dir exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    parts_dir = out_dir / PARTS

    def settings(ref: ShardRef) -> dict[str, Any]:
        # the raw shard's sha256 catches a caption edit of the same length, which its size alone does not
        return {"text_encoder": info, "input_size": ref.path.stat().st_size, "input_sha256": ref.sha256,
                "input_config_hash": manifest.config_hash}

    def done(ref: ShardRef) -> dict[str, Any] | None:
        part_path = parts_dir / f"{ref.name}.json"
        if not (out_dir / ref.name).is_file() or not part_path.is_file():
            return None
        try:
            part = read_json(part_path)
        except ValueError:
            return None
        return part if isinstance(part, dict) and part.get("settings") == settings(ref) else None

    def partition() -> tuple[dict[str, dict[str, Any]], list[ShardRef]]:
        parts = {ref.name: part for ref in refs if (part := done(ref)) is not None}
        return parts, [ref for ref in refs if ref.name not in parts]

    parts, pending = partition()
    if pending and encoder is None:
        encoder = load()
        loaded = encoder.info(tokens=cfg.tokens, token_layer=cfg.token_layer)
        if loaded != info:  # the description disagreed with the model: the model decides
            info = loaded
            parts, pending = partition()
    other = _other_settings(out_dir, info)
    if other and not overwrite:
        raise DataError(f"{out_dir}: holds shards embedded with {describe_encoder(other)}, not "
                        f"{describe_encoder(info)}; use another embed.out_dir, or --overwrite to replace them")
    if other:
        _clear(out_dir)
        parts, pending = partition()
    summary = EmbedSummary(out_dir=str(out_dir), encoder=info)
    summary.shards_skipped = len(parts)

    scans = [_scan(manifest, ref) for ref in tqdm(pending, desc="reading captions", unit="shard",
                                                  disable=not progress or not pending)]
    captions = list(dict.fromkeys(c for s in scans for c in s.captions))
    summary.captions = len(captions)
    cut = {captions[i] for i in encoder.tokenize(captions)[1]} if captions else set()
    summary.truncated = len(cut)

    key = f"{info['id']}@{info['weights_hash']}" + (f"#layer{cfg.token_layer}" if cfg.token_layer != -1 else "")
    cache = EmbeddingCache(cfg.cache_dir, key, cfg.max_length, info["dim"])
    try:
        missing = cache.missing(captions, cfg.tokens)
        summary.encoded = len(missing)
        if missing:
            summary.encode_seconds = _encode_missing(encoder, cache, missing, cfg, progress)
        if scans:  # from the first shard rewritten on, only a finished run has a manifest
            (out_dir / MANIFEST).unlink(missing_ok=True)
        for scan in tqdm(scans, desc="writing shards", unit="shard", disable=not progress or not scans):
            with ShardWriter(out_dir / scan.ref.name) as writer:
                for key, members in _embedded_samples(scan, manifest, cache, cfg.tokens):
                    writer.write(key, members)
            part = {"settings": settings(scan.ref), "split": scan.ref.split, "count": writer.count,
                    "sha256": writer.sha256, "rejects": scan.rejects,
                    "truncated_captions": sum(c in cut for c in scan.captions)}
            write_json_atomic(parts_dir / f"{scan.ref.name}.json", part)
            parts[scan.ref.name] = part
            summary.shards_written += 1
    finally:
        cache.close()

    out = _write_index(out_dir, in_dir, manifest, refs, parts, info)
    summary.rejects = out.rejects
    summary.samples = sum(split.count for split in out.splits.values())
    summary.splits = {name: split.count for name, split in out.splits.items()}
    summary.seconds = time.perf_counter() - t0
    return summary


def _other_settings(out_dir: Path, info: dict[str, Any]) -> dict[str, Any] | None:
    """The encoder settings of embedded shards already in out_dir, when they are not `info`'s."""
    records = [out_dir / MANIFEST, *sorted((out_dir / PARTS).glob("*.json"))]
    for path in records:
        try:
            data = read_json(path)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        te = data.get("text_encoder") or (data.get("settings") or {}).get("text_encoder")
        if isinstance(te, dict) and te != info:
            return te
    return None


def _clear(out_dir: Path) -> None:
    """Remove this stage's files from out_dir (shards, manifest, rejects, records), and nothing else."""
    for p in out_dir.iterdir():
        if SHARD_RE.match(p.name) or p.name in (MANIFEST, REJECTS):
            p.unlink()
    shutil.rmtree(out_dir / PARTS, ignore_errors=True)


def _write_index(out_dir: Path, in_dir: Path, manifest: Manifest, refs: list[ShardRef],
                 parts: dict[str, dict[str, Any]], info: dict[str, Any]) -> Manifest:
    """rejects.jsonl, then manifest.json (last): the raw manifest's splits with this stage's shards, counts and
    encoder block."""
    rejects = [r for ref in refs for r in parts[ref.name]["rejects"]]
    write_bytes_atomic(out_dir / REJECTS, rejects_bytes(rejects))
    splits: dict[str, Split] = {}
    for ref in refs:
        part = parts[ref.name]
        split = splits.setdefault(ref.split, Split())
        split.shards.append(ShardEntry(ref.name, part["count"], part["sha256"]))
        split.count += part["count"]
    out = Manifest(stage="embed", source=manifest.source, geometry=manifest.geometry,
                   config_hash=manifest.config_hash, splits=splits, rejects=len(rejects),
                   text_encoder=TextEncoderInfo(**info),
                   embed={"in_dir": str(in_dir), "prepare_rejects": manifest.rejects,
                          "truncated_captions": sum(p.get("truncated_captions", 0) for p in parts.values())})
    out.write(out_dir)
    out.directory = out_dir
    return out
