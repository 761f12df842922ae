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

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other processes, spinning threads make a training
# step up to ~8x slower (measured on 2 cores under load); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch.distributed as dist  # noqa: E402 - after the OpenMP setting
from t2v_data.config import ConfigError
from t2v_data.errors import DataError
from t2v_model.allocator import keep_freed_memory
from t2v_model.checkpoint import CheckpointError
from t2v_textenc import EncoderMismatchError
from t2v_train import TrainingError, load_experiment, train
from t2v_train.checkpoint import ResumeError, latest_checkpoint
from t2v_train.data import DataError as StreamError


def lost_peer(e: RuntimeError) -> bool:
    """Under torchrun: a collective failed because another rank exited (gloo raises a plain RuntimeError)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return distributed and (isinstance(e, dist.DistError) or "Connection closed by peer" in str(e))


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
    try:
        # --resume also overrides a config's `train.resume: never`, which would set the checkpoint aside
        overrides = list(args.overrides) + (["train.resume=never"] if args.fresh else [])
        overrides += ["train.resume=auto"] if args.resume else []
        exp = load_experiment(args.config, overrides)
        if args.resume and latest_checkpoint(exp.out_dir / "checkpoints") is None:
            raise ResumeError(f"{exp.out_dir / 'checkpoints'}: --resume given but there is no checkpoint")
        summary = train(exp, progress=not args.quiet)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (DataError, StreamError, EncoderMismatchError, ResumeError, CheckpointError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. an out_dir that cannot be created or written, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        # the rank that failed has printed why; this one only lost the connection to it
        print(f"error: rank {os.environ.get('RANK', '?')}: stopped because another rank failed (see its error)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        again = "run again without --fresh" if args.fresh else "run the same command again"
        print(f"interrupted: the checkpoints written so far are kept; {again} to resume from the last one",
              file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if summary["loss"] is None:
        print(f"nothing to train: {summary['checkpoint']} is already at step {summary['step']} >= "
              f"train.steps={exp.train.steps} (raise train.steps to continue, or --fresh to start over)")
    else:
        print(f"trained to step {summary['step']} (last loss {summary['loss']:.4f}) in {summary['seconds']:.0f} s; "
              f"checkpoint {summary['checkpoint']}; model {summary['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
