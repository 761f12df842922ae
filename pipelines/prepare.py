"""Prepare stage: write WebDataset shards for the `data:` section of an experiment config.

uv run pipelines/prepare.py --config configs/quickstart.yaml [data.num_samples=200 ...] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys

from t2v_data.config import ConfigError, build, load_yaml
from t2v_data.errors import DataError
from t2v_data.prepare import run_prepare
from t2v_data.prepare_config import PrepareConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--config", required=True, help="experiment YAML, e.g. configs/quickstart.yaml")
    ap.add_argument("--workers", type=int, help="parallel worker processes (overrides data.workers)")
    ap.add_argument("--overwrite", action="store_true", help="delete this stage's files in data.out_dir first")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.num_samples=200")
    args = ap.parse_args(argv)
    try:
        raw = load_yaml(args.config, args.overrides)
        if args.workers is not None:
            raw.setdefault("data", {})["workers"] = args.workers
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed: expected an integer, got {seed!r}")
        cfg = build(PrepareConfig, raw.get("data"), "data")
        summary = run_prepare(cfg, seed=seed, overwrite=args.overwrite, progress=not args.quiet)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
