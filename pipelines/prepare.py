"""Prepare stage: write WebDataset shards for the `data:` section of an experiment config.

uv run pipelines/prepare.py --config configs/quickstart.yaml [data.num_samples=200 ...] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys

from t2v_data.experiment import load_yaml, seed_of
from t2v_data.prepare import finished_shards, run_prepare
from t2v_data.prepare_config import prepare_config_from_experiment
from t2v_model.cli import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--config", required=True, help="experiment YAML, e.g. configs/quickstart.yaml")
    ap.add_argument("--workers", type=int, help="parallel worker processes (overrides data.workers)")
    ap.add_argument("--overwrite", action="store_true", help="delete this stage's files in data.out_dir first")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.num_samples=200")
    args = ap.parse_intermixed_args(argv)
    out_dir = None

    def stage() -> str:
        nonlocal out_dir
        raw = load_yaml(args.config, args.overrides)
        cfg = prepare_config_from_experiment(raw, workers=args.workers)
        out_dir = cfg.out_dir
        summary = run_prepare(cfg, seed=seed_of(raw), overwrite=args.overwrite, progress=not args.quiet)
        for warning in summary.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return "\n".join(summary.lines())

    def interrupted() -> str:
        if out_dir is None:
            return ""
        again = "run again without --overwrite to resume" if args.overwrite else "run the same command again to resume"
        return f"{finished_shards(out_dir)} finished shards kept in {out_dir}; {again}"

    # SIGTERM (a scheduler's stop) ends it like Ctrl-C: the workers are stopped, finished shards kept
    return run(stage, interrupted=interrupted, sigterm_interrupts=True)


if __name__ == "__main__":
    sys.exit(main())
