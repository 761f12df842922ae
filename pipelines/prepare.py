"""Prepare stage: write WebDataset shards for the `data:` section of an experiment config.

uv run pipelines/prepare.py --config configs/quickstart.yaml [data.num_samples=200 ...] [--workers 2]
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from t2v_data.config import ConfigError, load_yaml
from t2v_data.errors import DataError
from t2v_data.prepare import finished_shards, run_prepare
from t2v_data.prepare_config import prepare_config_from_experiment


def _stop(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: the worker processes are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--config", required=True, help="experiment YAML, e.g. configs/quickstart.yaml")
    ap.add_argument("--workers", type=int, help="parallel worker processes (overrides data.workers)")
    ap.add_argument("--overwrite", action="store_true", help="delete this stage's files in data.out_dir first")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.num_samples=200")
    args = ap.parse_intermixed_args(argv)
    cfg = None
    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    try:
        raw = load_yaml(args.config, args.overrides)
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed: expected an integer, got {seed!r}")
        cfg = prepare_config_from_experiment(raw, workers=args.workers)
        summary = run_prepare(cfg, seed=seed, overwrite=args.overwrite, progress=not args.quiet)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. disk full or permissions changed mid-run; finished shards stay
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if cfg is None:
            print("interrupted", file=sys.stderr)
        else:
            print(
                f"interrupted: {finished_shards(cfg.out_dir)} finished shards kept in {cfg.out_dir}; "
                + ("run again without --overwrite to resume" if args.overwrite else
                   "run the same command again to resume"),
                file=sys.stderr,
            )
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
