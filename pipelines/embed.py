"""Embed stage: encode every caption of the raw shards once with the frozen text encoder -> pre-embedded shards.

    uv run pipelines/embed.py --config configs/quickstart.yaml
    uv run pipelines/embed.py --config configs/quickstart.yaml embed.tokens=true embed.encoder=bert-base-cased

Reads `data.out_dir` (or embed.in_dir), writes data/<name>/embedded (or embed.out_dir). Re-running resumes: finished
shards are skipped and cached captions are not re-encoded. See docs/embed.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

from t2v_data.experiment import load_yaml
from t2v_model.cli import run
from t2v_textenc import embed_config_from_experiment, run_embed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Pre-embed the captions of a raw shard directory.")
    ap.add_argument("--config", required=True, help="experiment YAML, e.g. configs/quickstart.yaml")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. embed.tokens=true")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace shards in embed.out_dir that were embedded with other encoder settings")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after the flags
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def stage() -> str:
        cfg = embed_config_from_experiment(load_yaml(args.config, args.overrides))
        return run_embed(cfg, progress=not args.quiet, overwrite=args.overwrite).format()

    return run(stage, interrupted="finished shards are kept; run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
