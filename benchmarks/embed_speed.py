"""Embed-stage throughput on CPU: captions/s with an empty cache (cold) vs. a warm cache (cached).

    uv run benchmarks/embed_speed.py                      # 1000 samples x 2 captions, packaged MiniLM BERT
    uv run benchmarks/embed_speed.py --samples 4000 --json benchmarks/results/embed_speed.json

Builds a raw shard directory of synthetic shapes-style captions (distinct, 6-14 words) with tiny videos in a temp
dir, then runs the whole embed stage twice into fresh output dirs sharing one cache. The encoder is loaded before
timing. "stage" rates include reading and writing the shards; "encode" is the BERT pass alone.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import webdataset as wds

from t2v_model.text_encoder import load_text_encoder
from t2v_textenc import EmbedConfig, run_embed

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "cyan", "pink", "brown"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond"]
MOTIONS = ["moving left", "moving right", "moving up", "moving down", "bouncing", "spinning clockwise",
           "rotating slowly", "zooming in"]
BACKGROUNDS = ["", " on a black background", " over a grey background", " in front of a dark blue sky"]


def captions(n: int) -> list[str]:
    combos = itertools.product(["a", "a small", "a large"], COLORS, SHAPES, MOTIONS, BACKGROUNDS)
    out = [f"{size} {c} {s} {m}{b}" for size, c, s, m, b in combos]
    if n > len(out):
        raise SystemExit(f"at most {len(out)} distinct captions")
    return out[:n]


def write_raw(directory: Path, samples: int, per_sample: int, per_shard: int = 500) -> int:
    texts = captions(samples * per_sample)
    video = io.BytesIO()
    np.save(video, np.zeros((2, 4, 4, 3), np.uint8), allow_pickle=False)
    shards = []
    for start in range(0, samples, per_shard):
        name = f"train-{start // per_shard:06d}.tar"
        with wds.TarWriter(str(directory / name)) as sink:
            for i in range(start, min(start + per_shard, samples)):
                meta = {"captions": texts[i * per_sample : (i + 1) * per_sample], "source": "bench",
                        "source_id": f"b{i}", "attributes": {}}
                sink.write({"__key__": f"bench-{i:08d}", "video.npy": video.getvalue(),
                            "meta.json": json.dumps(meta).encode()})
        shards.append({"name": name, "count": min(per_shard, samples - start)})
    manifest = {"format": "t2v-shards/1", "stage": "prepare", "source": "bench",
                "geometry": {"frames": 2, "height": 4, "width": 4, "channels": 3, "fps": 8}, "config_hash": "bench",
                "splits": {"train": {"count": samples, "shards": shards}}, "rejects": 0, "created": ""}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return len(texts)


def run(samples: int, captions_per_sample: int = 2, batch_size: int = 64, tokens: bool = False,
        encoder=None) -> dict:
    """Cold then cached embed stage over `samples` x `captions_per_sample` distinct captions; returns the rates."""
    if encoder is None:
        encoder = load_text_encoder(None, batch_size=batch_size)
    results = {"encoder": encoder.id, "torch_threads": torch.get_num_threads(), "tokens": tokens}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "raw").mkdir()
        n = write_raw(tmp / "raw", samples, captions_per_sample)
        results["captions"] = n
        for run_name in ("cold", "cached"):
            cfg = EmbedConfig(in_dir=str(tmp / "raw"), out_dir=str(tmp / run_name), cache_dir=str(tmp / "cache"),
                              batch_size=batch_size, tokens=tokens)
            start = time.perf_counter()
            summary = run_embed(cfg, encoder=encoder, progress=False)
            seconds = time.perf_counter() - start
            results[run_name] = {"seconds": round(seconds, 3), "stage_captions_per_s": round(n / seconds, 1),
                                 "encoded": summary.encoded}
            if summary.encoded:
                results[run_name]["encode_captions_per_s"] = round(summary.encoded / summary.encode_seconds, 1)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--captions-per-sample", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--tokens", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = run(args.samples, args.captions_per_sample, args.batch_size, args.tokens)
    n = results["captions"]
    cold, cached = results["cold"], results["cached"]
    print(f"{n} distinct captions, {results['encoder']}, {results['torch_threads']} threads, tokens={args.tokens}")
    print(f"cold:   {cold['stage_captions_per_s']:8.1f} captions/s stage ({cold['seconds']:.2f} s; "
          f"encoder alone {cold.get('encode_captions_per_s', 0):.1f} captions/s)")
    print(f"cached: {cached['stage_captions_per_s']:8.1f} captions/s stage ({cached['seconds']:.2f} s; "
          f"{cached['encoded']} encoded)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
