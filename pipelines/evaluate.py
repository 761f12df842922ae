"""Evaluate stage: prompt adherence (colour / motion read back from generated pixels) on synthetic prompts (held out
of training when data.shapes.holdout names combinations).

    uv run pipelines/evaluate.py --config configs/quickstart.yaml [--checkpoint DIR] [evaluate.steps=50]

Prints a table and writes runs/<name>/eval/results.json (+ samples.gif/.png).
"""

from __future__ import annotations

import argparse
import sys

from t2v_model.allocator import keep_freed_memory
from t2v_model.cli import run
from t2v_train import load_experiment
from t2v_train.evaluate import evaluate, format_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Score a checkpoint's prompt adherence on synthetic prompts.")
    ap.add_argument("--config", required=True, help="experiment YAML, e.g. configs/quickstart.yaml")
    ap.add_argument("--checkpoint", help="inference checkpoint dir (default: evaluate.checkpoint or runs/<name>/model)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. evaluate.num_prompts=64")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after the flags
    keep_freed_memory()  # sampling re-allocates the same activations every step (t2v_model/allocator.py)
    return run(lambda: format_table(evaluate(load_experiment(args.config, args.overrides), args.checkpoint,
                                             progress=not args.quiet)))


if __name__ == "__main__":
    sys.exit(main())
