"""The whole pipeline on a 2-core CPU in under 30 minutes: prepare -> embed -> train -> generate -> evaluate.

    uv run pipelines/quickstart.py [--config configs/quickstart.yaml] [train.steps=300 ...]

Each stage is the same code as its own script (pipelines/<stage>.py), called in-process; the dotted overrides go to
every stage. Stages that are already done are skipped (prepare/embed resume, train continues from its checkpoint).
Ends with runs/<name>/samples/ (.gif/.mp4/.png) and the evaluation table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# OpenMP's idle threads spin a little, then sleep: see pipelines/train.py. Must be set before torch is imported.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import embed  # noqa: E402 - the pipeline scripts next to this one
import evaluate  # noqa: E402
import generate  # noqa: E402
import prepare  # noqa: E402
import train  # noqa: E402

from t2v_data.experiment import Paths, load_yaml  # noqa: E402
from t2v_data.prepare_config import prepare_config_from_experiment  # noqa: E402
from t2v_data.shards import Manifest, iter_samples  # noqa: E402
from t2v_model.cli import run  # noqa: E402
from t2v_textenc.config import embed_config_from_experiment  # noqa: E402
from t2v_train.config import load_experiment  # noqa: E402

PROMPTS = ["a red circle moving left", "a green square moving right", "a blue triangle moving up",
           "a yellow star moving down"]


def prompts(raw: dict, given: list[str] | None) -> list[str]:
    """--prompt, else the shape prompts for the synthetic shapes, else the first captions of the held-out clips."""
    if given:
        return given
    if (raw.get("data") or {}).get("source", "shapes") == "shapes":
        return PROMPTS
    manifest = Manifest.read(Paths(raw).train_data)
    split = "val" if manifest.count("val") else "train"
    return list(dict.fromkeys(s.captions[0] for s in iter_samples(manifest, split)))[:4]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run prepare -> embed -> train -> generate -> evaluate.")
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--prompt", action="append", help="prompts for the generate stage (repeatable)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("overrides", nargs="*", help="dotted overrides for every stage, e.g. train.steps=300")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after the flags
    raw: dict = {}

    def check() -> None:
        raw.update(load_yaml(args.config, args.overrides))
        # every stage's section up front: a typo in train.* should not surface after prepare and embed have run
        prepare_config_from_experiment(raw)
        embed_config_from_experiment(raw)
        load_experiment(None, raw=raw)

    rc = run(check)
    if rc:
        return rc
    out_dir = Paths(raw).run
    gen = raw.get("evaluate") or {}
    common = ["--config", args.config, *(["--quiet"] if args.quiet else [])]
    stages = [
        ("prepare", lambda: prepare.main(common + args.overrides)),
        ("embed", lambda: embed.main(common + args.overrides)),
        ("train", lambda: train.main(common + args.overrides)),
        ("generate", lambda: generate.main(
            ["--checkpoint", str(out_dir / "model"), "--out", str(out_dir / "samples" / "prompt"),
             "--steps", str(gen.get("steps", 25)), "--guidance", str(gen.get("guidance", 3.0)),
             *(["--quiet"] if args.quiet else []), *[a for p in prompts(raw, args.prompt) for a in ("--prompt", p)]])),
        ("evaluate", lambda: evaluate.main(common + args.overrides)),
    ]
    total = time.perf_counter()
    for name, stage in stages:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        rc = stage()
        print(f"--- {name}: {time.perf_counter() - start:.0f} s", flush=True)
        if rc in (130, 143):
            print(f"quickstart stopped: interrupted in the {name} stage; the same command resumes", file=sys.stderr)
            return rc
        if rc != 0:
            print(f"quickstart stopped: the {name} stage failed (exit {rc})", file=sys.stderr)
            return rc
    print(f"\nquickstart done in {(time.perf_counter() - total) / 60:.1f} min; outputs in {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
