"""Generate videos from a trained checkpoint. Uses t2v-model alone.

    uv run pipelines/generate.py --checkpoint runs/quickstart/model --prompt "a red circle moving left" \
        --steps 50 --guidance 3 --seed 0 --out samples/red_left.mp4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from t2v_model.allocator import keep_freed_memory
from t2v_model.checkpoint import CheckpointError
from t2v_model.pipeline import TextToVideo
from t2v_model.video_io import save_grid, save_video


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate videos from text with a t2v checkpoint.")
    ap.add_argument("--checkpoint", required=True, type=Path, help="directory with model.safetensors + config.json")
    ap.add_argument("--prompt", action="append", required=True, help="repeat for several videos")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    ap.add_argument("--out", type=Path, default=Path("samples/video.mp4"),
                    help=".mp4 / .gif / .png, or no extension for all three; several prompts -> numbered files + grid")
    ap.add_argument("--scale", type=int, default=4, help="pixel upscaling of the written files")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = ap.parse_args(argv)
    keep_freed_memory()  # every denoise step re-allocates the same activations (t2v_model/allocator.py)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        pipe = TextToVideo.from_pretrained(args.checkpoint, device=device)
        start = time.perf_counter()
        videos = pipe.generate(args.prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
                               sampler=args.sampler, eta=args.eta, progress=True)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    fps = pipe.card.data.fps
    written = []
    if len(videos) == 1:
        written += save_video(args.out, videos[0], fps=fps, scale=args.scale)
    else:
        for i, video in enumerate(videos):
            written += save_video(args.out.with_name(f"{args.out.stem}-{i}{args.out.suffix}"), video, fps, args.scale)
        written += save_grid(args.out.with_name(f"{args.out.stem}-grid.gif"), videos, fps=fps, scale=args.scale)
    print(f"{len(videos)} video(s) in {seconds:.1f} s ({args.steps} {args.sampler} steps, guidance {args.guidance})")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
