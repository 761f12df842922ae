"""Train stage: pre-embedded shards -> checkpoints + an exported inference model under runs/<name>/.

    uv run pipelines/train.py --config configs/quickstart.yaml [train.lr=3e-4 ...] [--resume]
    uv run torchrun --nproc-per-node 2 pipelines/train.py --config configs/quickstart.yaml   # DDP (gloo on CPU)

`train.resume: auto` (the default) continues from the newest checkpoint in runs/<name>/checkpoints; `--resume`
insists on one (even over a config's train.resume: never); `--fresh` (train.resume=never) starts over, first moving
the previous run's checkpoints, model, samples and metrics into runs/<name>/replaced-<UTC time>/. Ctrl-C: exit 130,
the checkpoints written so far are kept and a run without --fresh (or with --resume) continues from the last one.
"""

from __future__ import annotations

import argparse
import os
import sys

# Idle OpenMP threads spin 10k rounds, then sleep (GNU OpenMP, which torch's wheels ship). A quickstart train step on
# 2 cores: 345 ms this way, 317 ms with the default 300k rounds, 450 ms never spinning (OMP_WAIT_POLICY=PASSIVE); with
# another process busy on one of the cores: 1.07 s, 6.3 s and 0.76 s. On a machine shared with other work, set
# OMP_WAIT_POLICY=PASSIVE. Must be set before torch is imported.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from t2v_model.allocator import keep_freed_memory  # noqa: E402 - after the OpenMP setting
from t2v_model.cli import run  # noqa: E402
from t2v_train import load_experiment, train  # noqa: E402
from t2v_train.checkpoint import ResumeError, latest_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train a text-to-video Unet3D on pre-embedded shards.")
    ap.add_argument("--config", required=True, help="experiment YAML, e.g. configs/quickstart.yaml")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="fail unless a checkpoint exists to continue from")
    group.add_argument("--fresh", action="store_true",
                       help="start over, moving the previous run's outputs aside (train.resume=never)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 train.steps=2000")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after the flags
    keep_freed_memory()  # no page faults re-touching last step's activations (t2v_model/allocator.py)

    def stage() -> str | None:
        # --resume also overrides a config's `train.resume: never`, which would set the checkpoint aside
        overrides = list(args.overrides) + (["train.resume=never"] if args.fresh else [])
        overrides += ["train.resume=auto"] if args.resume else []
        exp = load_experiment(args.config, overrides)
        if args.resume and latest_checkpoint(exp.out_dir / "checkpoints") is None:
            raise ResumeError(f"{exp.out_dir / 'checkpoints'}: --resume given but there is no checkpoint")
        summary = train(exp, progress=not args.quiet)
        if int(os.environ.get("RANK", "0")) != 0:
            return None
        if summary["loss"] is None:
            return (f"nothing to train: {summary['checkpoint']} is already at step {summary['step']} >= "
                    f"train.steps={exp.train.steps} (raise train.steps to continue, or --fresh to start over)")
        return (f"trained to step {summary['step']} (last loss {summary['loss']:.4f}) in {summary['seconds']:.0f} s; "
                f"checkpoint {summary['checkpoint']}; model {summary['model']}")

    again = "run again without --fresh" if args.fresh else "run the same command again"
    return run(stage, interrupted=f"the checkpoints written so far are kept; {again} to resume from the last one")


if __name__ == "__main__":
    sys.exit(main())
