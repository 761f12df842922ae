"""Prepare-stage throughput on synthetic shapes with 1 and 2 worker processes (end to end: generate, encode,
write tar shards, manifest), written to a temporary directory.

    uv run benchmarks/prepare_speed.py                      # 32x32x8 (quickstart) and 64x64x16
    uv run benchmarks/prepare_speed.py --samples 4000 --json benchmarks/results/prepare_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from t2v_data.prepare import run_prepare
from t2v_data.prepare_config import prepare_config


def measure(size: int, frames: int, samples: int, workers: int, shard: int) -> float:
    with tempfile.TemporaryDirectory(prefix="t2v-prepare-bench-") as tmp:
        cfg = prepare_config(
            {
                "out_dir": tmp,
                "size": size,
                "frames": frames,
                "num_samples": samples,
                "workers": workers,
                "shard_max_samples": shard,
            }
        )
        return run_prepare(cfg, seed=0, progress=False).clips_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000, help="clips per run at 32x32x8 (a quarter at 64x64x16)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results = []
    for size, frames, n in ((32, 8, args.samples), (64, 16, max(args.samples // 4, 8))):
        row = {"geometry": f"{size}x{size}x{frames}", "clips": n}
        for workers in (1, 2):
            row[f"clips_per_s_{workers}w"] = round(measure(size, frames, n, workers, shard=max(n // 16, 1)), 1)
        results.append(row)
        print(
            f"shapes {row['geometry']:>9}  {n:5d} clips   1 worker: {row['clips_per_s_1w']:7.1f} clips/s   "
            f"2 workers: {row['clips_per_s_2w']:7.1f} clips/s   (cpu count {os.cpu_count()})"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
